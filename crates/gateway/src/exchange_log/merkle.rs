//! The Merkle tree of RFC 9162 (Certificate Transparency 2.0, same hashing
//! as RFC 6962): leaf and node hashes with 0x00/0x01 domain separation,
//! an append-only frontier, inclusion and consistency proofs, and their
//! verification.
//!
//! Storage is by complete subtrees: the node at `(level, index)` covers
//! leaves `index << level .. (index + 1) << level`, and is stored once that
//! range is complete. Appending a leaf stores it and every subtree it
//! completes; any other range is computed from stored nodes.

use aws_lc_rs::digest::{Context, SHA256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of an empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    digest(&[&[]])
}

/// The hash of a leaf: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    digest(&[&[0x00], data])
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    digest(&[&[0x01], left, right])
}

fn digest(parts: &[&[u8]]) -> Hash {
    let mut context = Context::new(&SHA256);
    for part in parts {
        context.update(part);
    }
    let mut hash = [0; 32];
    hash.copy_from_slice(context.finish().as_ref());
    hash
}

/// Where complete subtree hashes come from.
pub trait Nodes {
    type Error;
    /// The hash of the complete subtree at `(level, index)`.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The right edge of a tree: the roots of its complete subtrees, largest
/// first. Enough to append leaves and compute the root, at most 64 hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)`, levels strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The frontier of a tree of `size` leaves, read from stored nodes.
    pub fn load<N: Nodes>(nodes: &N, size: u64) -> Result<Self, N::Error> {
        let mut peaks = Vec::new();
        let mut start = 0;
        for level in (0..64).rev() {
            if size & (1 << level) != 0 {
                peaks.push((level, nodes.node(level, start >> level)?));
                start += 1 << level;
            }
        }
        Ok(Self { size, peaks })
    }

    /// The frontier of a tree of `size` leaves from its peaks' hashes,
    /// largest first, as [`Frontier::peak_bytes`] gives them; `None` when
    /// their number is not the one `size` asks for.
    pub fn from_peak_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        let levels = (0..64u32).rev().filter(|level| size & (1 << level) != 0);
        let hashes = bytes.chunks_exact(32);
        if !hashes.remainder().is_empty() || hashes.len() != size.count_ones() as usize {
            return None;
        }
        let peaks = levels
            .zip(hashes)
            .map(|(level, hash)| Some((level, Hash::try_from(hash).ok()?)))
            .collect::<Option<_>>()?;
        Some(Self { size, peaks })
    }

    /// The peaks' hashes, largest first, end to end: with the size, all a
    /// writer needs to append (what a shared store keeps of the tree's
    /// right edge).
    pub fn peak_bytes(&self) -> Vec<u8> {
        self.peaks.iter().flat_map(|(_, hash)| *hash).collect()
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf; returns the nodes this completes, the leaf first, as
    /// `(level, index, hash)`.
    pub fn append(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let index = self.size;
        let mut completed = vec![(0, index, leaf)];
        let (mut level, mut hash) = (0, leaf);
        while let Some(&(peak_level, peak)) = self.peaks.last() {
            if peak_level != level {
                break;
            }
            self.peaks.pop();
            hash = node_hash(&peak, &hash);
            level += 1;
            completed.push((level, index >> level, hash));
        }
        self.peaks.push((level, hash));
        self.size += 1;
        completed
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut root)) = peaks.next() else {
            return empty_root();
        };
        for (_, peak) in peaks {
            root = node_hash(peak, &root);
        }
        root
    }
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The hash of leaves `start..start + len` (a range as RFC 9162's recursion
/// produces: `start` aligned to the largest power of two within `len`).
pub fn range_hash<N: Nodes>(nodes: &N, start: u64, len: u64) -> Result<Hash, N::Error> {
    if len.is_power_of_two() {
        let level = len.trailing_zeros();
        return nodes.node(level, start >> level);
    }
    let k = split(len);
    let left = range_hash(nodes, start, k)?;
    let right = range_hash(nodes, start + k, len - k)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree of the first `size` leaves.
pub fn root<N: Nodes>(nodes: &N, size: u64) -> Result<Hash, N::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(nodes, 0, size)
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {index} is not in a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a tree of {old} leaves cannot be a prefix of one of {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

/// The inclusion proof (audit path) of leaf `index` in the tree of `size`
/// leaves, RFC 9162 section 2.1.3.1.
pub fn inclusion_proof<N: Nodes>(
    nodes: &N,
    index: u64,
    size: u64,
) -> Result<Result<Vec<Hash>, ProofError>, N::Error> {
    if index >= size {
        return Ok(Err(ProofError::IndexOutOfRange { index, size }));
    }
    let mut proof = Vec::new();
    // PATH(m, D[start..start+n]), unrolled from the top; hashes are pushed
    // top-down and reversed at the end (the proof lists them bottom-up).
    let (mut m, mut start, mut n) = (index, 0, size);
    while n > 1 {
        let k = split(n);
        if m < k {
            proof.push(range_hash(nodes, start + k, n - k)?);
            n = k;
        } else {
            proof.push(range_hash(nodes, start, k)?);
            m -= k;
            start += k;
            n -= k;
        }
    }
    proof.reverse();
    Ok(Ok(proof))
}

/// The consistency proof between the trees of `old` and `new` leaves,
/// RFC 9162 section 2.1.4.1.
pub fn consistency_proof<N: Nodes>(
    nodes: &N,
    old: u64,
    new: u64,
) -> Result<Result<Vec<Hash>, ProofError>, N::Error> {
    if old > new {
        return Ok(Err(ProofError::SizesOutOfOrder { old, new }));
    }
    if old == 0 || old == new {
        return Ok(Ok(Vec::new()));
    }
    // SUBPROOF(m, D[start..start+n], b), unrolled like the path above.
    let mut proof = Vec::new();
    let (mut m, mut start, mut n, mut whole) = (old, 0, new, true);
    loop {
        if m == n {
            if !whole {
                proof.push(range_hash(nodes, start, n)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            proof.push(range_hash(nodes, start + k, n - k)?);
            n = k;
        } else {
            proof.push(range_hash(nodes, start, k)?);
            m -= k;
            start += k;
            n -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(Ok(proof))
}

/// Verifies an inclusion proof, RFC 9162 section 2.1.3.2.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    verify_subtree_inclusion(leaf, 0, index, size, proof, root)
}

/// Verifies the inclusion proof of the complete subtree `(level, index)`
/// (leaves `index << level` to `(index + 1) << level`, whose hash is
/// `subtree`) in the tree of `size` leaves: the leaf's proof without its
/// first `level` hashes, which lie inside the subtree. Level 0 is RFC 9162
/// section 2.1.3.2 exactly.
pub fn verify_subtree_inclusion(
    subtree: &Hash,
    level: u32,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let end = index
        .checked_add(1)
        .and_then(|next| next.checked_shl(level))
        .filter(|end| *end >> level == index + 1);
    if end.is_none_or(|end| end > size) {
        return Err(ProofError::IndexOutOfRange {
            index: index << level.min(63),
            size,
        });
    }
    // Within the subtree, every step hashes the running value on the left.
    let (mut f_n, mut s_n) = (index, (size - 1) >> level);
    let mut r = *subtree;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies a consistency proof, RFC 9162 section 2.1.4.2.
pub fn verify_consistency(
    old: u64,
    old_root: &Hash,
    new: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    if old == new {
        return match (proof.is_empty(), old_root == new_root) {
            (false, _) => Err(ProofError::WrongLength),
            (true, false) => Err(ProofError::RootMismatch),
            (true, true) => Ok(()),
        };
    }
    if old == 0 {
        // Every tree extends the empty one, whose root is fixed.
        return match (proof.is_empty(), *old_root == empty_root()) {
            (false, _) => Err(ProofError::WrongLength),
            (true, false) => Err(ProofError::RootMismatch),
            (true, true) => Ok(()),
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength);
    };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if f_r != *old_root || s_r != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The hash of the complete subtree over leaves `first..first + count`,
/// from its records' `(index, bytes)` in index order: what a store that
/// keeps no node below some level gives for one. `Err(index)`: record
/// `index` is missing.
pub fn subtree_of_records<B: AsRef<[u8]>>(
    first: u64,
    count: u64,
    records: impl IntoIterator<Item = (u64, B)>,
) -> Result<Hash, u64> {
    subtree_of_leaves(
        first,
        count,
        records
            .into_iter()
            .map(|(index, bytes)| (index, leaf_hash(bytes.as_ref()))),
    )
}

/// The same from the records' leaf hashes, as stored beside them: a
/// proof made of them is checked against the signed root by whoever
/// receives it, so a leaf stored wrong fails the proof, never passes one.
pub fn subtree_of_leaves(
    first: u64,
    count: u64,
    leaves: impl IntoIterator<Item = (u64, Hash)>,
) -> Result<Hash, u64> {
    let mut subtree = Frontier::default();
    for (index, leaf) in leaves {
        if index != first + subtree.size() || subtree.size() == count {
            break;
        }
        subtree.append(leaf);
    }
    if subtree.size() == count {
        Ok(subtree.root())
    } else {
        Err(first + subtree.size())
    }
}

/// Complete subtrees held in memory: for tests, archives and `audit
/// verify`, which rebuilds the tree from the records.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[l][i]` is the node `(l, i)`; empty below `lowest`.
    levels: Vec<Vec<Hash>>,
    /// The lowest level kept.
    lowest: u32,
    frontier: Frontier,
}

impl MemoryTree {
    /// A tree that keeps only its nodes of `lowest` and above: for a whole
    /// log, whose every node would take 64 bytes a record (64 GB for a
    /// billion). Its nodes below are not [`Nodes::node`]s; its root is.
    pub fn from_level(lowest: u32) -> Self {
        Self {
            lowest,
            ..Self::default()
        }
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        for (level, index, hash) in self.frontier.append(leaf) {
            if level < self.lowest {
                continue;
            }
            let level = level as usize;
            while self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, index);
            self.levels[level].push(hash);
        }
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The stored nodes of one level.
    pub fn level(&self, level: u32) -> &[Hash] {
        self.levels.get(level as usize).map_or(&[], Vec::as_slice)
    }
}

/// A node that a tree of this size has not completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("node ({level}, {index}) is not stored")]
pub struct MissingNode {
    pub level: u32,
    pub index: u64,
}

impl Nodes for MemoryTree {
    type Error = MissingNode;

    fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(level as usize)
            .and_then(|nodes| nodes.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree kept from a level holds only the nodes there and above, the
    /// same as a whole tree's, and the same root.
    #[test]
    fn a_tree_kept_from_a_level_holds_its_upper_nodes_only() {
        let (mut whole, mut upper) = (MemoryTree::default(), MemoryTree::from_level(8));
        for n in 0..1_000u32 {
            let leaf = leaf_hash(&n.to_be_bytes());
            whole.push(leaf);
            upper.push(leaf);
            assert_eq!(upper.root(), whole.root());
        }
        for level in 0..8 {
            assert!(upper.level(level).is_empty(), "level {level} kept");
        }
        assert_eq!(upper.level(8).len(), 3);
        for level in 8..10 {
            assert_eq!(upper.level(level), whole.level(level), "level {level}");
        }
    }

    /// A frontier kept as its peaks' bytes appends as the original does,
    /// and bytes of the wrong length for the size are refused.
    #[test]
    fn a_frontier_survives_its_peak_bytes() {
        let mut frontier = Frontier::default();
        for n in 0..37u8 {
            let kept = Frontier::from_peak_bytes(frontier.size(), &frontier.peak_bytes()).unwrap();
            assert_eq!(kept, frontier);
            frontier.append(leaf_hash(&[n]));
        }
        let bytes = frontier.peak_bytes();
        assert_eq!(bytes.len(), 32 * 37u64.count_ones() as usize);
        assert_eq!(Frontier::from_peak_bytes(39, &bytes), None);
        assert_eq!(Frontier::from_peak_bytes(37, &bytes[1..]), None);
    }

    /// The leaves of the RFC 6962 test vectors used by Certificate
    /// Transparency implementations.
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Their roots for sizes 1 to 8.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn hex(hash: &Hash) -> String {
        hash.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn tree(size: u64) -> MemoryTree {
        let mut tree = MemoryTree::default();
        for i in 0..size {
            tree.push(leaf_hash(&i.to_be_bytes()));
        }
        tree
    }

    #[test]
    fn roots_match_the_rfc_6962_vectors() {
        let mut tree = MemoryTree::default();
        assert_eq!(
            hex(&tree.root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (leaf, expected) in LEAVES.iter().zip(ROOTS) {
            tree.push(leaf_hash(leaf));
            assert_eq!(hex(&tree.root()), expected);
            assert_eq!(root(&tree, tree.size()).unwrap(), tree.root());
        }
    }

    #[test]
    fn frontier_reloads_from_stored_nodes() {
        for size in 0..70 {
            let tree = tree(size);
            let frontier = Frontier::load(&tree, size).unwrap();
            assert_eq!(frontier.root(), tree.root(), "size {size}");
            assert_eq!(frontier, tree.frontier);
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_breaks_when_altered() {
        let full = tree(40);
        for size in 1..=40 {
            let root = root(&full, size).unwrap();
            for index in 0..size {
                let leaf = full.node(0, index).unwrap();
                let proof = inclusion_proof(&full, index, size).unwrap().unwrap();
                verify_inclusion(&leaf, index, size, &proof, &root).unwrap();
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert_eq!(
                        verify_inclusion(&leaf, index, size, &bad, &root),
                        Err(ProofError::RootMismatch)
                    );
                    assert_ne!(first, &leaf);
                    let short = &proof[1..];
                    assert!(verify_inclusion(&leaf, index, size, short, &root).is_err());
                }
                let other = leaf_hash(b"not in the tree");
                assert!(verify_inclusion(&other, index, size, &proof, &root).is_err());
            }
        }
        assert!(matches!(
            inclusion_proof(&full, 5, 5).unwrap(),
            Err(ProofError::IndexOutOfRange { .. })
        ));
    }

    /// A complete subtree is proven by its first leaf's proof less the
    /// hashes inside it, in every tree that holds it whole, and in none
    /// that holds only part of it.
    #[test]
    fn complete_subtrees_are_proven_like_leaves() {
        let full = tree(40);
        for level in 1..=3 {
            for index in 0..(40 >> level) {
                let (first, end) = (index << level, (index + 1) << level);
                let subtree = full.node(level, index).unwrap();
                for size in end..=40 {
                    let root = root(&full, size).unwrap();
                    let proof = inclusion_proof(&full, first, size).unwrap().unwrap();
                    let above = &proof[level as usize..];
                    verify_subtree_inclusion(&subtree, level, index, size, above, &root).unwrap();
                    let other = leaf_hash(b"another subtree");
                    assert!(
                        verify_subtree_inclusion(&other, level, index, size, above, &root).is_err()
                    );
                }
                if end > 1 {
                    assert!(matches!(
                        verify_subtree_inclusion(&subtree, level, index, end - 1, &[], &subtree),
                        Err(ProofError::IndexOutOfRange { .. })
                    ));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_breaks_when_altered() {
        let full = tree(33);
        for new in 1..=33 {
            let new_root = root(&full, new).unwrap();
            for old in 1..=new {
                let old_root = root(&full, old).unwrap();
                let proof = consistency_proof(&full, old, new).unwrap().unwrap();
                verify_consistency(old, &old_root, new, &new_root, &proof)
                    .unwrap_or_else(|error| panic!("{old} -> {new}: {error}"));
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][31] ^= 0x80;
                    assert!(
                        verify_consistency(old, &old_root, new, &new_root, &bad).is_err(),
                        "{old} -> {new}, hash {i}"
                    );
                }
                if old < new {
                    let mut forged = old_root;
                    forged[0] ^= 1;
                    assert!(verify_consistency(old, &forged, new, &new_root, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn rfc_vector_proofs() {
        // Consistency 3 -> 7 and inclusion of leaf 0 in 8, cross-checked
        // against the shapes CT implementations produce.
        let mut tree = MemoryTree::default();
        for leaf in LEAVES {
            tree.push(leaf_hash(leaf));
        }
        assert_eq!(consistency_proof(&tree, 3, 7).unwrap().unwrap().len(), 4);
        assert_eq!(consistency_proof(&tree, 4, 7).unwrap().unwrap().len(), 1);
        assert_eq!(consistency_proof(&tree, 6, 8).unwrap().unwrap().len(), 3);
        assert_eq!(inclusion_proof(&tree, 0, 8).unwrap().unwrap().len(), 3);
        assert_eq!(inclusion_proof(&tree, 5, 8).unwrap().unwrap().len(), 3);
        assert_eq!(inclusion_proof(&tree, 6, 7).unwrap().unwrap().len(), 2);
    }
}
