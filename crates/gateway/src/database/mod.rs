//! The PostgreSQL database a fleet of gateway nodes shares (`[store] url`).
//!
//! One connection per node, shared: tokio-postgres pipelines the queries of
//! concurrent calls on it, so single-statement work (a consent use taken
//! atomically, say) needs no pool. A connection that dies is dialled again
//! by the next query that needs it, one dial at a time; until it succeeds,
//! queries fail with [`DatabaseError::Unreachable`] and the calls that need
//! them are refused (fail closed), never served on a guess.
//!
//! The schema is versioned in `govbridge_schema`: every node applies the
//! migrations it knows at start, under an advisory lock so that nodes
//! starting together do not race, and refuses a database whose schema is
//! newer than it knows.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::config::StoreConfig;

pub mod bundles;
pub mod nodes;
pub mod nonces;
pub mod rates;
pub mod receipts;
mod tls;
pub mod witness;

/// How long a dial may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a query may take. Past it the connection is taken for dead
/// (a network path can die without closing the socket) and the next query
/// dials again.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a statement [`Database::run_once`] sent is waited for past
/// [`QUERY_TIMEOUT`].
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `statement_timeout` of every session, past [`QUERY_TIMEOUT`] and
/// `SETTLE_TIMEOUT`: the server cancels a statement the node has given
/// up on, which would otherwise run on (waiting for a lock, say) holding
/// what it has locked, however long. Migrations lift it.
const STATEMENT_TIMEOUT: &str = "5s";

/// The `lock_timeout` of a statement run with [`Database::run_once`], for
/// each lock it waits for (a take may wait for another node's take, then
/// for what that one waited for): a few such waits fit in
/// [`QUERY_TIMEOUT`] and `SETTLE_TIMEOUT`, so that one held up by locks
/// fails on the server while its caller still waits for the answer.
pub const ONCE_LOCK_TIMEOUT: &str = "1s";

/// After a failed dial, queries fail at once for this long instead of
/// queueing to dial again one after the other.
const DIAL_BACKOFF: Duration = Duration::from_secs(1);

/// How long a migration's statement waits for each lock on a table: past
/// it, the node's start fails and says why. A migration waiting for a lock
/// that another session holds (a long transaction, a stuck one) would
/// otherwise hold up, queued behind it, every node's statements on that
/// table: the whole fleet would stop serving for as long.
const MIGRATION_LOCK_TIMEOUT: &str = "2s";

/// The advisory lock key migrations hold ("govbridg" in ASCII).
const MIGRATION_LOCK: i64 = 0x676f_7662_7269_6467;

/// The schema, one step per version; applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE consent_uses (
             consent text PRIMARY KEY,
             -- uses spent, plus those reserved by calls in flight on any node
             counted integer NOT NULL CHECK (counted >= 0),
             -- seconds since the epoch; past it the count is never needed
             expires bigint NOT NULL
         );",
    ),
    (
        2,
        "CREATE TABLE nodes (
             id text PRIMARY KEY,
             address text NOT NULL,
             version text NOT NULL,
             config_fingerprint text NOT NULL,
             policy_fingerprint text NOT NULL,
             started_at timestamptz NOT NULL,
             -- the database's clock, so that nodes' clocks never matter
             heartbeat_at timestamptz NOT NULL,
             stopped_at timestamptz
         );",
    ),
    (
        3,
        "CREATE TABLE log_head (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             origin text NOT NULL,
             -- the log's public key: every node signs with its private half
             verifier text NOT NULL,
             size bigint NOT NULL,
             -- the tree's right edge: its complete subtrees' hashes,
             -- largest first; locked by the node appending
             frontier bytea NOT NULL
         -- room on its page for each update's new version: updated at every
         -- append, the row is then pruned in place, never left to vacuum
         ) WITH (fillfactor = 10);
         CREATE TABLE log_records (
             idx bigint PRIMARY KEY,
             phase text NOT NULL,
             request_id text NOT NULL,
             at_us bigint NOT NULL,
             caller text NOT NULL,
             provider text NOT NULL,
             method text NOT NULL,
             purpose text NOT NULL,
             subject text,
             allowed bigint NOT NULL,
             grpc_status bigint,
             error_kind text,
             concealed_until bigint NOT NULL,
             -- the node that committed it
             node text NOT NULL,
             -- the leaf's data: everything above is a copy for queries
             record bytea NOT NULL
         );
         CREATE INDEX log_records_request ON log_records (request_id, idx);
         CREATE INDEX log_records_subject ON log_records (subject, idx)
             WHERE subject IS NOT NULL;
         CREATE TABLE log_nodes (
             level smallint NOT NULL,
             idx bigint NOT NULL,
             hash bytea NOT NULL,
             PRIMARY KEY (level, idx)
         );
         CREATE TABLE log_checkpoints (
             size bigint PRIMARY KEY,
             signed_at bigint NOT NULL,
             node text NOT NULL,
             note text NOT NULL
         );
         -- Appends a batch of records after whatever the log holds, in the
         -- database: the head is locked only while this runs, never across
         -- a round trip to a node. Adds each leaf hash (computed by the
         -- node: SHA-256 of 0x00 and the record) to the tree's right edge
         -- as RFC 9162 does, storing every subtree it completes, and
         -- returns where the batch starts and the log's new size and edge.
         CREATE FUNCTION log_append(
             committer text, leaves bytea[], records bytea[],
             phases text[], request_ids text[], at_us bigint[], callers text[],
             providers text[], methods text[], purposes text[], subjects text[],
             allowed bigint[], statuses bigint[], error_kinds text[],
             concealed bigint[],
             OUT first bigint, OUT size bigint, OUT frontier bytea)
         LANGUAGE plpgsql AS $$
         DECLARE
             edge bytea;
             peak_levels int[] := '{}';
             peak_hashes bytea[] := '{}';
             node_levels smallint[] := '{}';
             node_indexes bigint[] := '{}';
             node_hashes bytea[] := '{}';
             leaf int;
             at bigint;
             level int;
             hash bytea;
             bit int;
             peak int := 0;
         BEGIN
             SELECT h.size, h.frontier INTO first, edge FROM log_head h FOR UPDATE;
             IF first IS NULL THEN
                 RAISE EXCEPTION 'the exchange log has no head row';
             END IF;
             FOR bit IN REVERSE 62..0 LOOP
                 IF (first >> bit) & 1 = 1 THEN
                     peak := peak + 1;
                     peak_levels := peak_levels || bit;
                     peak_hashes := peak_hashes || substring(edge FROM 32 * (peak - 1) + 1 FOR 32);
                 END IF;
             END LOOP;
             IF length(edge) <> 32 * peak THEN
                 RAISE EXCEPTION 'the exchange log''s head is malformed';
             END IF;
             FOR leaf IN 1..coalesce(cardinality(leaves), 0) LOOP
                 at := first + leaf - 1;
                 hash := leaves[leaf];
                 level := 0;
                 node_levels := node_levels || 0::smallint;
                 node_indexes := node_indexes || at;
                 node_hashes := node_hashes || hash;
                 WHILE cardinality(peak_levels) > 0
                       AND peak_levels[cardinality(peak_levels)] = level LOOP
                     hash := sha256('\\x01'::bytea || peak_hashes[cardinality(peak_hashes)] || hash);
                     peak_levels := trim_array(peak_levels, 1);
                     peak_hashes := trim_array(peak_hashes, 1);
                     level := level + 1;
                     node_levels := node_levels || level::smallint;
                     node_indexes := node_indexes || (at >> level);
                     node_hashes := node_hashes || hash;
                 END LOOP;
                 peak_levels := peak_levels || level;
                 peak_hashes := peak_hashes || hash;
             END LOOP;
             INSERT INTO log_records (idx, phase, request_id, at_us, caller, provider, method,
                 purpose, subject, allowed, grpc_status, error_kind, concealed_until, record, node)
             SELECT first + t.ord - 1, t.phase, t.request_id, t.at_us, t.caller, t.provider,
                 t.method, t.purpose, t.subject, t.allowed, t.status, t.error_kind,
                 t.concealed, t.record, committer
             FROM unnest(phases, request_ids, at_us, callers, providers, methods, purposes,
                 subjects, allowed, statuses, error_kinds, concealed, records)
                 WITH ORDINALITY AS t(phase, request_id, at_us, caller, provider, method,
                 purpose, subject, allowed, status, error_kind, concealed, record, ord);
             INSERT INTO log_nodes (level, idx, hash)
             SELECT * FROM unnest(node_levels, node_indexes, node_hashes);
             size := first + coalesce(cardinality(leaves), 0);
             SELECT coalesce(string_agg(p.hash, ''::bytea ORDER BY p.ord), ''::bytea)
             INTO frontier FROM unnest(peak_hashes) WITH ORDINALITY AS p(hash, ord);
             UPDATE log_head h SET size = log_append.size, frontier = log_append.frontier;
         END
         $$;",
    ),
    (
        4,
        "CREATE TABLE global_bundles (
             instance text NOT NULL,
             version bigint NOT NULL,
             -- the bundle as `directory publish` wrote it: its signature,
             -- not this table, is what the nodes trust
             bundle bytea NOT NULL,
             published_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (instance, version)
         );",
    ),
    (
        5,
        // The tree from level 8 up, as the SQLite store keeps it: a leaf
        // completes two nodes on average, and their rows were a third of
        // an append's work. Below, nodes are hashed again from the
        // records; each record's leaf hash goes in its own row. Rows of
        // logs written before keep their lower nodes, no longer read.
        "ALTER TABLE log_records ADD COLUMN leaf bytea;
         CREATE OR REPLACE FUNCTION log_append(
             committer text, leaves bytea[], records bytea[],
             phases text[], request_ids text[], at_us bigint[], callers text[],
             providers text[], methods text[], purposes text[], subjects text[],
             allowed bigint[], statuses bigint[], error_kinds text[],
             concealed bigint[],
             OUT first bigint, OUT size bigint, OUT frontier bytea)
         LANGUAGE plpgsql AS $$
         DECLARE
             edge bytea;
             peak_levels int[] := '{}';
             peak_hashes bytea[] := '{}';
             node_levels smallint[] := '{}';
             node_indexes bigint[] := '{}';
             node_hashes bytea[] := '{}';
             leaf int;
             at bigint;
             level int;
             hash bytea;
             bit int;
             peak int := 0;
         BEGIN
             SELECT h.size, h.frontier INTO first, edge FROM log_head h FOR UPDATE;
             IF first IS NULL THEN
                 RAISE EXCEPTION 'the exchange log has no head row';
             END IF;
             FOR bit IN REVERSE 62..0 LOOP
                 IF (first >> bit) & 1 = 1 THEN
                     peak := peak + 1;
                     peak_levels := peak_levels || bit;
                     peak_hashes := peak_hashes || substring(edge FROM 32 * (peak - 1) + 1 FOR 32);
                 END IF;
             END LOOP;
             IF length(edge) <> 32 * peak THEN
                 RAISE EXCEPTION 'the exchange log''s head is malformed';
             END IF;
             FOR leaf IN 1..coalesce(cardinality(leaves), 0) LOOP
                 at := first + leaf - 1;
                 hash := leaves[leaf];
                 level := 0;
                 WHILE cardinality(peak_levels) > 0
                       AND peak_levels[cardinality(peak_levels)] = level LOOP
                     hash := sha256('\\x01'::bytea || peak_hashes[cardinality(peak_hashes)] || hash);
                     peak_levels := trim_array(peak_levels, 1);
                     peak_hashes := trim_array(peak_hashes, 1);
                     level := level + 1;
                     IF level >= 8 THEN
                         node_levels := node_levels || level::smallint;
                         node_indexes := node_indexes || (at >> level);
                         node_hashes := node_hashes || hash;
                     END IF;
                 END LOOP;
                 peak_levels := peak_levels || level;
                 peak_hashes := peak_hashes || hash;
             END LOOP;
             INSERT INTO log_records (idx, phase, request_id, at_us, caller, provider, method,
                 purpose, subject, allowed, grpc_status, error_kind, concealed_until, record, node,
                 leaf)
             SELECT first + t.ord - 1, t.phase, t.request_id, t.at_us, t.caller, t.provider,
                 t.method, t.purpose, t.subject, t.allowed, t.status, t.error_kind,
                 t.concealed, t.record, committer, t.leaf
             FROM unnest(phases, request_ids, at_us, callers, providers, methods, purposes,
                 subjects, allowed, statuses, error_kinds, concealed, records, leaves)
                 WITH ORDINALITY AS t(phase, request_id, at_us, caller, provider, method,
                 purpose, subject, allowed, status, error_kind, concealed, record, leaf, ord);
             IF cardinality(node_levels) > 0 THEN
                 INSERT INTO log_nodes (level, idx, hash)
                 SELECT * FROM unnest(node_levels, node_indexes, node_hashes);
             END IF;
             size := first + coalesce(cardinality(leaves), 0);
             SELECT coalesce(string_agg(p.hash, ''::bytea ORDER BY p.ord), ''::bytea)
             INTO frontier FROM unnest(peak_hashes) WITH ORDINALITY AS p(hash, ord);
             UPDATE log_head h SET size = log_append.size, frontier = log_append.frontier;
         END
         $$;",
    ),
    (
        6,
        // Federation as one gateway (see witness.rs, nonces.rs and
        // receipts.rs): the last checkpoint of each partner's log the
        // fleet cosigned, which node sends the fleet's own checkpoints to
        // its witnesses, the partners' assertions used, so that none is
        // used twice, and the partners' receipts the nodes kept.
        "CREATE TABLE witness_checkpoints (
             instance text PRIMARY KEY,
             size bigint NOT NULL,
             -- the checkpoint as the partner's log signed it
             note text NOT NULL,
             cosigned_at timestamptz NOT NULL DEFAULT now()
         );
         CREATE TABLE log_witness_sender (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             node text NOT NULL,
             -- the database's clock: nodes' clocks never matter
             until timestamptz NOT NULL
         );
         CREATE TABLE assertion_nonces (
             instance text NOT NULL,
             nonce text NOT NULL,
             -- seconds since the epoch: past it the assertion is refused
             -- as stale anyway, and the row may go
             until bigint NOT NULL,
             PRIMARY KEY (instance, nonce)
         );
         CREATE INDEX assertion_nonces_until ON assertion_nonces (until);
         -- Partners' receipts of the calls the nodes forwarded (see
         -- exchange_log::receipts): `seq` orders them for `audit pull`.
         CREATE TABLE log_receipts (
             seq bigserial PRIMARY KEY,
             instance text NOT NULL,
             idx bigint NOT NULL,
             request_id text NOT NULL,
             fetched_at bigint NOT NULL,
             bundle text NOT NULL,
             UNIQUE (instance, idx)
         );",
    ),
    (
        7,
        "-- What `audit pull` reads of the receipts, after its cursor: once
         -- every insert under way has ended (SHARE waits for them and holds
         -- new ones for the read), so that no receipt can commit later with
         -- an order below the cursor and be passed over for good. Inserts
         -- take `seq` when they run, not when they commit.
         CREATE FUNCTION log_receipts_after(cursor_seq bigint, page bigint)
         RETURNS TABLE (seq bigint, instance text, idx bigint, request_id text, bundle text)
         LANGUAGE plpgsql AS $$
         BEGIN
             LOCK TABLE log_receipts IN SHARE MODE;
             RETURN QUERY
                 SELECT r.seq, r.instance, r.idx, r.request_id, r.bundle
                 FROM log_receipts r WHERE r.seq > cursor_seq ORDER BY r.seq LIMIT page;
         END
         $$;",
    ),
    (
        8,
        // The subjects a stream named besides its first: a copy in each
        // record's row (a JSON array, NULL when none) and one row each in
        // `log_subjects`, where the Data Tracker finds them. The append
        // of migration 5 stays for nodes of the version before, during a
        // rolling restart: their records name no more subjects.
        "ALTER TABLE log_records ADD COLUMN more_subjects text;
         CREATE TABLE log_subjects (
             subject text NOT NULL,
             idx bigint NOT NULL,
             PRIMARY KEY (subject, idx)
         );
         -- what `audit pull` checks a page of records against
         CREATE INDEX log_subjects_idx ON log_subjects (idx);
         CREATE FUNCTION log_append(
             committer text, leaves bytea[], records bytea[],
             phases text[], request_ids text[], at_us bigint[], callers text[],
             providers text[], methods text[], purposes text[], subjects text[],
             allowed bigint[], statuses bigint[], error_kinds text[],
             concealed bigint[], subject_lists text[],
             OUT first bigint, OUT size bigint, OUT frontier bytea)
         LANGUAGE plpgsql AS $$
         BEGIN
             SELECT a.first, a.size, a.frontier INTO first, size, frontier
             FROM log_append(committer, leaves, records, phases, request_ids, at_us, callers,
                 providers, methods, purposes, subjects, allowed, statuses, error_kinds,
                 concealed) a;
             IF cardinality(array_remove(subject_lists, NULL)) > 0 THEN
                 UPDATE log_records r SET more_subjects = l.list
                 FROM unnest(subject_lists) WITH ORDINALITY AS l(list, ord)
                 WHERE l.list IS NOT NULL AND r.idx = first + l.ord - 1;
                 INSERT INTO log_subjects (subject, idx)
                 SELECT s.subject, first + l.ord - 1
                 FROM unnest(subject_lists) WITH ORDINALITY AS l(list, ord),
                     json_array_elements_text(l.list::json) AS s(subject)
                 WHERE l.list IS NOT NULL;
             END IF;
         END
         $$;",
    ),
    (
        9,
        // The tree grown by the node, not in the database. The node
        // appending knows the head it left after its last append; while no
        // other node appended since, it sends the nodes its batch completes
        // and the new right edge, and the database checks that the head is
        // still the one they grow from. Growing the tree in PL/pgSQL, a
        // leaf at a time, was about a fifth of an append's time in the
        // database (docs/benchmarks.md). When another node did append, the
        // database grows the tree itself, as before (migration 8).
        "CREATE FUNCTION log_append_grown(
             committer text, expected_size bigint, expected_frontier bytea,
             grown_frontier bytea, node_levels smallint[], node_indexes bigint[],
             node_hashes bytea[], leaves bytea[], records bytea[],
             phases text[], request_ids text[], at_us bigint[], callers text[],
             providers text[], methods text[], purposes text[], subjects text[],
             allowed bigint[], statuses bigint[], error_kinds text[],
             concealed bigint[], subject_lists text[],
             OUT first bigint, OUT size bigint, OUT frontier bytea)
         LANGUAGE plpgsql AS $$
         DECLARE
             edge bytea;
         BEGIN
             SELECT h.size, h.frontier INTO first, edge FROM log_head h FOR UPDATE;
             IF first IS NULL THEN
                 RAISE EXCEPTION 'the exchange log has no head row';
             END IF;
             IF first <> expected_size OR edge <> expected_frontier THEN
                 SELECT a.first, a.size, a.frontier INTO first, size, frontier
                 FROM log_append(committer, leaves, records, phases, request_ids, at_us,
                     callers, providers, methods, purposes, subjects, allowed, statuses,
                     error_kinds, concealed, subject_lists) a;
                 RETURN;
             END IF;
             INSERT INTO log_records (idx, phase, request_id, at_us, caller, provider, method,
                 purpose, subject, allowed, grpc_status, error_kind, concealed_until, record, node,
                 leaf, more_subjects)
             SELECT first + t.ord - 1, t.phase, t.request_id, t.at_us, t.caller, t.provider,
                 t.method, t.purpose, t.subject, t.allowed, t.status, t.error_kind,
                 t.concealed, t.record, committer, t.leaf, t.list
             FROM unnest(phases, request_ids, at_us, callers, providers, methods, purposes,
                 subjects, allowed, statuses, error_kinds, concealed, records, leaves,
                 subject_lists)
                 WITH ORDINALITY AS t(phase, request_id, at_us, caller, provider, method,
                 purpose, subject, allowed, status, error_kind, concealed, record, leaf, list,
                 ord);
             IF cardinality(node_levels) > 0 THEN
                 INSERT INTO log_nodes (level, idx, hash)
                 SELECT * FROM unnest(node_levels, node_indexes, node_hashes);
             END IF;
             IF cardinality(array_remove(subject_lists, NULL)) > 0 THEN
                 INSERT INTO log_subjects (subject, idx)
                 SELECT s.subject, first + l.ord - 1
                 FROM unnest(subject_lists) WITH ORDINALITY AS l(list, ord),
                     json_array_elements_text(l.list::json) AS s(subject)
                 WHERE l.list IS NOT NULL;
             END IF;
             size := first + coalesce(cardinality(leaves), 0);
             frontier := grown_frontier;
             UPDATE log_head h SET size = log_append_grown.size,
                 frontier = log_append_grown.frontier;
         END
         $$;",
    ),
    (
        10,
        // Lookups by request id and by subject written after the fact, in
        // sorted runs, instead of two indexes of `log_records` that every
        // append updated at random places under the head's lock (a third
        // of an append's time in the database, docs/benchmarks.md). A
        // node's sealer (exchange_log::fleet::seal) copies what the fleet
        // appended into `log_lookups`, outside the head's lock; records
        // past `log_sealed.sealed` are read directly (their range of the
        // primary key). A lookup's value is a kind letter (`r` a request
        // id, `s` a subject) and the value, compared byte by byte.
        "CREATE TABLE log_lookups (
             value text COLLATE \"C\" NOT NULL,
             idx bigint NOT NULL
         );
         CREATE UNIQUE INDEX log_lookups_value ON log_lookups (value, idx);
         CREATE TABLE log_sealed (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             -- records below this index have their lookups in log_lookups
             sealed bigint NOT NULL
         );
         -- Seals at most `most` records after those sealed, if no other
         -- node is sealing (then `sealed` is NULL); `behind` is how many
         -- committed records are left unsealed (before another node's
         -- seal, when one is under way).
         CREATE FUNCTION log_seal(most bigint, OUT sealed bigint, OUT behind bigint)
         LANGUAGE plpgsql AS $$
         DECLARE
             head bigint;
             upto bigint;
         BEGIN
             SELECT h.size INTO head FROM log_head h;
             head := coalesce(head, 0);
             SELECT s.sealed INTO log_seal.sealed FROM log_sealed s;
             behind := greatest(head - log_seal.sealed, 0);
             IF behind = 0 THEN
                 RETURN;
             END IF;
             SELECT s.sealed INTO log_seal.sealed FROM log_sealed s FOR UPDATE SKIP LOCKED;
             IF NOT FOUND THEN
                 RETURN;
             END IF;
             upto := log_seal.sealed + greatest(least(most, head - log_seal.sealed), 0);
             IF upto > log_seal.sealed THEN
                 INSERT INTO log_lookups (value, idx)
                 SELECT t.value, t.idx FROM (
                     SELECT 'r' || r.request_id, r.idx FROM log_records r
                     WHERE r.idx >= log_seal.sealed AND r.idx < upto
                     UNION ALL
                     SELECT 's' || r.subject, r.idx FROM log_records r
                     WHERE r.idx >= log_seal.sealed AND r.idx < upto AND r.subject IS NOT NULL
                 ) AS t (value, idx)
                 ORDER BY t.value, t.idx;
                 UPDATE log_sealed s SET sealed = upto;
                 log_seal.sealed := upto;
             END IF;
             behind := greatest(head - log_seal.sealed, 0);
         END
         $$;
         INSERT INTO log_sealed (sealed) VALUES (0);
         -- What was appended before is sealed by migration 11, which seals
         -- the whole log again (this one sealed it too, until 11 came).
         DROP INDEX log_records_request;
         DROP INDEX log_records_subject;",
    ),
    (
        11,
        // Lookups keyed by a 64-bit hash of the kind letter and the value
        // (PostgreSQL's own `hashtextextended`), not by the value, and
        // indexed within segments of 2^18 records: `(idx >> 18, key,
        // idx)`. One B-tree over the whole log took each seal's sorted
        // run all over it, so a seal dirtied more pages, and wrote more of
        // them whole into the WAL after each checkpoint, the longer the
        // log: 16,384 records' lookups took 63 to 150 ms and 150 bytes to
        // 2.8 KB of WAL a record with a million records sealed, 274 to
        // 776 ms and 5.5 to 10 KB with 20 million (docs/benchmarks.md).
        // Within segments, a seal writes into the last one (two across a
        // boundary: 15 to 20 MB of index each, full) whatever the log's
        // length (63 to 113 ms, 229 bytes to 1.6 KB, at 20 million); a
        // lookup descends once per segment, walking back from the newest.
        // A hit is checked against the record's columns, so a collision
        // only costs a record read. A subject is looked up only for the
        // records the Data Tracker shows (a call's outcome, or a refusal):
        // a forwarded call's decision is found by its request id alone.
        "DROP TABLE log_lookups;
         CREATE TABLE log_lookups (
             key bigint NOT NULL,
             idx bigint NOT NULL
         );
         CREATE UNIQUE INDEX log_lookups_key ON log_lookups ((idx >> 18), key, idx);
         CREATE FUNCTION log_lookup_key(kind text, value text) RETURNS bigint
         LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
         RETURN hashtextextended(kind || value, 0);
         -- The segments a lookup descends into: every one holding a
         -- sealed record.
         CREATE FUNCTION log_lookup_segments() RETURNS bigint[]
         LANGUAGE sql STABLE PARALLEL SAFE
         RETURN ARRAY(SELECT generate_series(0, (s.sealed - 1) >> 18) FROM log_sealed s);
         CREATE OR REPLACE FUNCTION log_seal(most bigint, OUT sealed bigint, OUT behind bigint)
         LANGUAGE plpgsql AS $$
         DECLARE
             head bigint;
             upto bigint;
         BEGIN
             SELECT h.size INTO head FROM log_head h;
             head := coalesce(head, 0);
             SELECT s.sealed INTO log_seal.sealed FROM log_sealed s;
             behind := greatest(head - log_seal.sealed, 0);
             IF behind = 0 THEN
                 RETURN;
             END IF;
             SELECT s.sealed INTO log_seal.sealed FROM log_sealed s FOR UPDATE SKIP LOCKED;
             IF NOT FOUND THEN
                 RETURN;
             END IF;
             upto := log_seal.sealed + greatest(least(most, head - log_seal.sealed), 0);
             IF upto > log_seal.sealed THEN
                 INSERT INTO log_lookups (key, idx)
                 SELECT t.key, t.idx FROM (
                     SELECT log_lookup_key('r', r.request_id), r.idx FROM log_records r
                     WHERE r.idx >= log_seal.sealed AND r.idx < upto
                     UNION ALL
                     SELECT log_lookup_key('s', r.subject), r.idx FROM log_records r
                     WHERE r.idx >= log_seal.sealed AND r.idx < upto AND r.subject IS NOT NULL
                     AND (r.phase = 'outcome' OR r.error_kind IS NOT NULL)
                 ) AS t (key, idx)
                 ORDER BY t.idx >> 18, t.key, t.idx;
                 UPDATE log_sealed s SET sealed = upto;
                 log_seal.sealed := upto;
             END IF;
             behind := greatest(head - log_seal.sealed, 0);
         END
         $$;
         -- What was sealed before, sealed again, whatever the role's limits.
         UPDATE log_sealed SET sealed = 0;
         SET LOCAL statement_timeout = 0;
         SET LOCAL work_mem = '256MB';
         SELECT log_seal(9223372036854775807);",
    ),
    (
        12,
        // What each node's share of a member's rate follows: the calls a
        // second each rate-limited member attempted through a node, as a
        // JSON object by member id, reported at each heartbeat under the
        // second of the database's clock it was written in.
        "CREATE TABLE rate_demand (
             epoch bigint NOT NULL,
             node text NOT NULL,
             demand text NOT NULL,
             PRIMARY KEY (epoch, node)
         );",
    ),
    (
        13,
        // How nodes find the counts of consents long expired, to forget
        // them a batch at a time while they serve (`SharedUses`).
        "CREATE INDEX IF NOT EXISTS consent_uses_by_expiry ON consent_uses (expires);",
    ),
];

/// Why the database cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DatabaseError {
    #[error("the database {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error(
        "the database {url} has schema version {found}, newer than this gateway's {known}: \
         upgrade the gateway"
    )]
    NewerSchema { url: String, found: i32, known: i32 },
    #[error("the database {url} failed: {detail}")]
    Failed { url: String, detail: String },
}

/// A statement [`Database::run_once`] certainly did not run: it was never
/// sent, or the server refused it (a lock waited for too long, a
/// cancellation).
#[derive(Debug)]
pub struct NotRun {
    /// The node stopped: none will be sent again.
    pub stopped: bool,
    pub error: DatabaseError,
}

/// Drives a connection until it closes, and says why it did.
async fn watch<F>(connection: F, url: String)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(error) = connection.await {
        tracing::warn!(database = %url, %error, "database connection lost");
    }
}

/// The fleet's database, as one node sees it.
#[derive(Debug)]
pub struct Database {
    config: StoreConfig,
    client: ArcSwapOption<Client>,
    /// Held while dialling, so that a dead connection is replaced once;
    /// holds the last failed dial, for [`DIAL_BACKOFF`].
    dialling: tokio::sync::Mutex<Option<(std::time::Instant, DatabaseError)>>,
    /// Set once the node stops: no connection is dialled again.
    closed: std::sync::atomic::AtomicBool,
}

impl Database {
    /// Connects, and brings the schema up to date.
    pub async fn connect(config: &StoreConfig) -> Result<Arc<Self>, DatabaseError> {
        Self::connect_at_schema(config, i32::MAX).await
    }

    /// Connects, and brings the schema up to `version` at most: what a
    /// node of an older version leaves, for tests of the migrations that
    /// follow.
    #[doc(hidden)]
    pub async fn connect_at_schema(
        config: &StoreConfig,
        version: i32,
    ) -> Result<Arc<Self>, DatabaseError> {
        let database = Self::new(config);
        let mut client = database.dial().await?;
        database.migrate(&mut client, version).await?;
        database.client.store(Some(Arc::new(client)));
        Ok(Arc::new(database))
    }

    /// Connects to a database the fleet's nodes have set up, changing
    /// nothing: what an operator's command reads.
    pub async fn open(config: &StoreConfig) -> Result<Arc<Self>, DatabaseError> {
        let database = Self::new(config);
        let client = database.dial().await?;
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        let schema = client
            .query_opt("SELECT max(version) FROM govbridge_schema", &[])
            .await;
        let found = match schema {
            Ok(row) => row
                .and_then(|row| row.get::<_, Option<i32>>(0))
                .unwrap_or(0),
            // No table yet: no node ever ran against this database.
            Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => 0,
            Err(error) => return Err(database.failed(&error)),
        };
        database.not_newer(found)?;
        if found < known {
            return Err(DatabaseError::Failed {
                url: database.url(),
                detail: format!(
                    "its schema is version {found}, older than this command's {known}: start a \
                     gateway node of this version against it first (nodes migrate it)"
                ),
            });
        }
        database.client.store(Some(Arc::new(client)));
        Ok(Arc::new(database))
    }

    /// Another connection to the same database, dialled when first used:
    /// for work that must neither wait behind this connection's queries
    /// nor hold them up.
    pub fn sibling(&self) -> Arc<Self> {
        Arc::new(Self::new(&self.config))
    }

    fn new(config: &StoreConfig) -> Self {
        Self {
            config: config.clone(),
            client: ArcSwapOption::empty(),
            dialling: tokio::sync::Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Closes the connection once the node stops, so that it ends as a
    /// client's (not as the database's going away, which would be
    /// reported), and dials no other: what still asks gets an error.
    pub fn close(&self) {
        // SeqCst, with the dial's store-then-look: either the dial sees the
        // flag, or this clears what the dial stored.
        self.closed.store(true, Ordering::SeqCst);
        self.client.store(None);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn closed_error(&self) -> DatabaseError {
        DatabaseError::Failed {
            url: self.url(),
            detail: "closed: this node has stopped".to_owned(),
        }
    }

    /// The URL, without its password.
    pub fn url(&self) -> String {
        self.config.redacted()
    }

    /// Runs `query` on the open connection within [`QUERY_TIMEOUT`]; a
    /// query that gets no answer in time drops the connection, so that the
    /// next one dials again.
    pub async fn run<T, F>(&self, query: impl FnOnce(Arc<Client>) -> F) -> Result<T, DatabaseError>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client().await?;
        self.run_on(client, query).await
    }

    /// [`Self::run`], for a statement that must run at most once and may
    /// be tried again: `Err(NotRun)` when it certainly did not run (never
    /// sent, or refused by the server for a lock it waited for too long,
    /// or cancelled), `Ok(Err(_))` when it failed otherwise or whether it
    /// ran is unknown. `query` is one statement.
    ///
    /// Such a statement bounds each of its waits for a lock on the server
    /// ([`ONCE_LOCK_TIMEOUT`], with `set_config('lock_timeout', ...)` in
    /// the statement): held up by row locks, it fails there, rather than
    /// run once no one waits for it any more. An answer slower than [`QUERY_TIMEOUT`] (a stalled
    /// server) is waited for 2 s more (`SETTLE_TIMEOUT`), the next queries
    /// going to a new connection meanwhile.
    pub async fn run_once<T, F>(
        &self,
        query: impl FnOnce(Arc<Client>) -> F,
    ) -> Result<Result<T, DatabaseError>, NotRun>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client().await.map_err(|error| NotRun {
            stopped: self.is_closed(),
            error,
        })?;
        let mut answer = std::pin::pin!(query(Arc::clone(&client)));
        let answer = match tokio::time::timeout(QUERY_TIMEOUT, answer.as_mut()).await {
            Ok(answer) => answer,
            Err(_) => {
                self.forget(&client);
                match tokio::time::timeout(SETTLE_TIMEOUT, answer).await {
                    Ok(answer) => answer,
                    Err(_) => return Ok(Err(self.no_answer())),
                }
            }
        };
        match answer {
            Err(error)
                if [SqlState::LOCK_NOT_AVAILABLE, SqlState::QUERY_CANCELED]
                    .iter()
                    .any(|refused| error.code() == Some(refused)) =>
            {
                Err(NotRun {
                    stopped: self.is_closed(),
                    error: self.failed(&error),
                })
            }
            answer => Ok(answer.map_err(|error| self.failed(&error))),
        }
    }

    async fn run_on<T, F>(
        &self,
        client: Arc<Client>,
        query: impl FnOnce(Arc<Client>) -> F,
    ) -> Result<T, DatabaseError>
    where
        F: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        match tokio::time::timeout(QUERY_TIMEOUT, query(Arc::clone(&client))).await {
            Ok(answer) => answer.map_err(|error| self.failed(&error)),
            Err(_) => {
                self.forget(&client);
                Err(self.no_answer())
            }
        }
    }

    /// Takes `client` for dead, unless another query replaced it already:
    /// the next query dials again.
    fn forget(&self, client: &Arc<Client>) {
        // In one step: a connection dialled meanwhile stays.
        let _ = self.client.compare_and_swap(client, None);
    }

    fn no_answer(&self) -> DatabaseError {
        DatabaseError::Unreachable {
            url: self.url(),
            detail: format!("no answer within {QUERY_TIMEOUT:?}"),
        }
    }

    /// The open connection, dialled again if it closed.
    async fn client(&self) -> Result<Arc<Client>, DatabaseError> {
        if self.is_closed() {
            return Err(self.closed_error());
        }
        if let Some(client) = self.client.load_full()
            && !client.is_closed()
        {
            return Ok(client);
        }
        let mut dialling = self.dialling.lock().await;
        if self.is_closed() {
            return Err(self.closed_error());
        }
        if let Some(client) = self.client.load_full()
            && !client.is_closed()
        {
            return Ok(client);
        }
        if let Some((when, error)) = dialling.as_ref()
            && when.elapsed() < DIAL_BACKOFF
        {
            return Err(error.clone());
        }
        match self.dial().await {
            Ok(client) => {
                let client = Arc::new(client);
                self.client.store(Some(Arc::clone(&client)));
                // The node stopped while this dialled: the connection is
                // not kept (dropped here, it closes as a client's).
                if self.is_closed() {
                    self.client.store(None);
                    return Err(self.closed_error());
                }
                *dialling = None;
                tracing::info!(database = %self.url(), "connected to the database");
                Ok(client)
            }
            Err(error) => {
                *dialling = Some((std::time::Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// An error of a query, for the calls that needed it.
    pub fn failed(&self, error: &tokio_postgres::Error) -> DatabaseError {
        if error.is_closed() {
            DatabaseError::Unreachable {
                url: self.url(),
                detail: error.to_string(),
            }
        } else {
            DatabaseError::Failed {
                url: self.url(),
                detail: error.as_db_error().map_or_else(
                    || error.to_string(),
                    |db| format!("{}: {}", db.code().code(), db.message()),
                ),
            }
        }
    }

    async fn dial(&self) -> Result<Client, DatabaseError> {
        let mut postgres = self.config.postgres.clone();
        let timeout = postgres
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        postgres.connect_timeout(timeout);
        // A path that dies without closing the socket is noticed in
        // seconds, not after the system's two hours.
        postgres
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(15));
        let unreachable = |detail: String| DatabaseError::Unreachable {
            url: self.url(),
            detail,
        };
        let describe = |error: tokio_postgres::Error| {
            // The cause says why TLS failed (an unknown issuer, say).
            let mut detail = error
                .as_db_error()
                .map_or_else(|| error.to_string(), |db| db.message().to_owned());
            if let Some(cause) = std::error::Error::source(&error) {
                detail = format!("{detail}: {cause}");
            }
            unreachable(detail)
        };
        let url = self.url();
        let dialled = match &self.config.ca {
            None => {
                let (client, connection) = tokio::time::timeout(timeout, postgres.connect(NoTls))
                    .await
                    .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
                    .map_err(describe)?;
                tokio::spawn(watch(connection, url));
                client
            }
            Some(ca) => {
                let tls = crate::identity::tls::verifying_client_config(ca).map_err(|error| {
                    DatabaseError::Failed {
                        url: self.url(),
                        detail: format!("store.ca: {error}"),
                    }
                })?;
                let connecting = postgres.connect(tls::RustlsConnect(tls));
                let (client, connection) = tokio::time::timeout(timeout, connecting)
                    .await
                    .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
                    .map_err(describe)?;
                tokio::spawn(watch(connection, url));
                client
            }
        };
        // What every query here is written for, whatever the server's or
        // role's default: under a stricter isolation, two nodes taking the
        // log's head or a consent's uses at once would fail each other; and
        // what a statement wrote is on disk once it returns (a consent's
        // use taken, a partner's nonce spent), even where the server is
        // tuned for `synchronous_commit = off`; and no statement the node
        // stopped waiting for runs on in the server ([`STATEMENT_TIMEOUT`]).
        // Bounded as the connection was: behind a pooler that logs in by
        // itself (PgBouncer), or facing a server frozen with its socket
        // open, no answer may come, and every query of the node waits for
        // this dial.
        let session = format!(
            "SET default_transaction_isolation = 'read committed'; \
             SET synchronous_commit = on; SET statement_timeout = '{STATEMENT_TIMEOUT}'"
        );
        let settings = dialled.batch_execute(&session);
        tokio::time::timeout(timeout, settings)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer to the session's settings within {timeout:?}"
                ))
            })?
            .map_err(|error| self.failed(&error))?;
        Ok(dialled)
    }

    /// Refuses a schema newer than this gateway knows.
    fn not_newer(&self, found: i32) -> Result<(), DatabaseError> {
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if found > known {
            return Err(DatabaseError::NewerSchema {
                url: self.url(),
                found,
                known,
            });
        }
        Ok(())
    }

    /// Applies the migrations past the database's schema, up to `upto`.
    async fn migrate(&self, client: &mut Client, upto: i32) -> Result<(), DatabaseError> {
        let failed = |error: tokio_postgres::Error| self.failed(&error);
        let transaction = client.transaction().await.map_err(failed)?;
        // Building an index or sealing again takes as long as the tables
        // are large, and another node's migration is waited for as long as
        // it takes (whatever the session's or role's timeouts); the
        // tables' locks only for a bound.
        transaction
            .batch_execute(
                "SELECT set_config('statement_timeout', '0', true), \
                 set_config('lock_timeout', '0', true)",
            )
            .await
            .map_err(failed)?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(failed)?;
        transaction
            .execute(
                "SELECT set_config('lock_timeout', $1, true)",
                &[&MIGRATION_LOCK_TIMEOUT],
            )
            .await
            .map_err(failed)?;
        // From here on, a lock waited for too long says so.
        let held_up = |doing: &str, error: tokio_postgres::Error| {
            if error.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) {
                return failed(error);
            }
            DatabaseError::Failed {
                url: self.url(),
                detail: format!(
                    "{doing} waited over {MIGRATION_LOCK_TIMEOUT} for a lock on a table that \
                     another session holds (a long or stuck transaction: `pg_locks` and \
                     `pg_stat_activity` name it). Nothing was changed, and nodes already running \
                     keep serving: start this one again once that session ends"
                ),
            }
        };
        let reading = |error| held_up("reading its schema's version", error);
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS govbridge_schema (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(reading)?;
        let found: i32 = transaction
            .query_one(
                "SELECT coalesce(max(version), 0) FROM govbridge_schema",
                &[],
            )
            .await
            .map_err(reading)?
            .get(0);
        self.not_newer(found)?;
        let due = MIGRATIONS
            .iter()
            .filter(|(version, _)| *version > found && *version <= upto);
        for (version, sql) in due {
            let migrating =
                |error| held_up(&format!("migrating its schema to version {version}"), error);
            transaction.batch_execute(sql).await.map_err(migrating)?;
            transaction
                .execute(
                    "INSERT INTO govbridge_schema (version) VALUES ($1)",
                    &[version],
                )
                .await
                .map_err(migrating)?;
            tracing::info!(database = %self.url(), version, "database schema migrated");
        }
        transaction.commit().await.map_err(failed)
    }
}
