//! Limits: permits for calls under load, and the size of request
//! messages.
//!
//! Every call first passes [`Limits::permit`]: a gateway-wide cap on calls
//! in flight (beyond it, calls are shed at once rather than queued), then
//! the caller's token bucket (requests per second), then the
//! caller's cap on calls in flight. A permitted call holds its
//! [`CallPermit`] until its response ends. Its request body then passes a
//! [`MessageSizeLimit`], which reads each gRPC message's 5-byte prefix as
//! the bytes go by and ends the call when one announces more than the
//! caller may send, before any of that message is relayed.
//!
//! This module must never wait, queue or buffer: each check is a hash
//! lookup and a few atomic operations, and the size check holds at most the
//! four bytes of a prefix split across frames, never a message. A call
//! refused here costs no exchange-log write (see
//! [`GatewayError::is_limit_refusal`]), so a flood is not turned into
//! disk work.
//!
//! Limits are part of a configuration snapshot. A reload keeps the
//! gateway-wide count and each remaining member's count of calls in flight
//! (calls permitted under the old snapshot still count), and a member's
//! token bucket when its rate and burst did not change; a member whose rate
//! changed starts with a full bucket.
//!
//! In a fleet, each node admits its share of a member's rate. Shares follow
//! demand: every heartbeat a node tells the fleet's database how many calls
//! a second each rate-limited member attempted through it, and takes as its
//! share what [`share`] gives it from every node's figures (see
//! [`crate::database::rates`]), so that a member whose calls all come
//! through one node (one HTTP/2 connection, as gRPC clients keep) gets its
//! whole rate there.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::error::GatewayError;
use crate::config::{LimitsConfig, MemberLimits, RateLimit};
use crate::database::rates::{Snapshot, Snapshots};
use crate::identity::MemberId;
use crate::telemetry::metrics::Metrics;

/// The limits of one configuration, with the state that enforces them.
#[derive(Debug)]
pub struct Limits {
    gateway_max: NonZeroU32,
    /// Calls in flight through the whole gateway; shared across reloads.
    gateway: Arc<CallCount>,
    /// The nodes of the fleet that are up, this one included (1 without a
    /// fleet). Shared across reloads; the fleet's heartbeat sets it.
    fleet_nodes: Arc<AtomicU32>,
    members: HashMap<MemberId, MemberLimiter>,
}

#[derive(Debug)]
struct MemberLimiter {
    limits: MemberLimits,
    /// `None` when the member's rate is unlimited. Shared across reloads
    /// that keep the rate.
    bucket: Option<Arc<Bucket>>,
    /// The member's calls in flight, counted even without a cap so that a
    /// cap set by a reload starts from the true count.
    in_flight: Arc<CallCount>,
    /// Calls the member attempted through this node since the fleet last
    /// took the count: its demand here.
    attempts: Arc<AtomicU64>,
}

impl MemberLimiter {
    fn new(limits: MemberLimits) -> Self {
        Self {
            limits,
            bucket: limits.rate.map(|rate| Arc::new(Bucket::new(rate))),
            in_flight: Arc::default(),
            attempts: Arc::default(),
        }
    }
}

/// A member's token bucket on this node: its share of the member's rate,
/// and of its burst (at least one call, so that each node can admit one).
/// A new share changes the refill, not the level: a node whose share grows
/// gets no fresh burst.
#[derive(Debug)]
struct Bucket {
    rate: RateLimit,
    level: Mutex<Level>,
}

#[derive(Debug)]
struct Level {
    /// This node's share of the rate, in (0, 1].
    share: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: RateLimit) -> Self {
        Self {
            rate,
            level: Mutex::new(Level {
                share: 1.0,
                tokens: f64::from(rate.burst.get()),
                at: Instant::now(),
            }),
        }
    }

    /// Calls a second and the burst at `share`.
    fn at_share(&self, share: f64) -> (f64, f64) {
        (
            f64::from(self.rate.per_second.get()) * share,
            (f64::from(self.rate.burst.get()) * share).max(1.0),
        )
    }

    fn level(&self) -> std::sync::MutexGuard<'_, Level> {
        // A level is two numbers: a panic between them leaves one usable.
        self.level.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The level refilled up to `now`.
    fn refill(&self, level: &mut Level, now: Instant) {
        let (per_second, burst) = self.at_share(level.share);
        let elapsed = now.saturating_duration_since(level.at).as_secs_f64();
        level.tokens = (level.tokens + elapsed * per_second).min(burst);
        // A call may have refilled it after `now` was read.
        level.at = level.at.max(now);
    }

    /// Takes a token, or says how long until there is one.
    fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut level = self.level();
        self.refill(&mut level, now);
        if level.tokens >= 1.0 {
            level.tokens -= 1.0;
            return Ok(());
        }
        let (per_second, _) = self.at_share(level.share);
        Err(Duration::from_secs_f64(
            ((1.0 - level.tokens) / per_second).min(3600.0),
        ))
    }

    /// From now on this node admits `share` of the rate. The level stays
    /// (at most the new burst): a node whose share grows gets no fresh
    /// burst.
    fn set_share(&self, share: f64, now: Instant) {
        let mut level = self.level();
        self.refill(&mut level, now);
        level.share = share.clamp(f64::MIN_POSITIVE, 1.0);
        let (_, burst) = self.at_share(level.share);
        level.tokens = level.tokens.min(burst);
    }

    fn share(&self) -> f64 {
        self.level().share
    }
}

/// The part of a member's rate kept in reserve, split equally between the
/// nodes up whatever their demand (see [`share`]).
const RESERVE: f64 = 0.05;

/// Node `me`'s share of a member's `rate` (calls a second), given the
/// calls a second the member attempted through each node up (`demands`,
/// one per node, `me`'s included), as one epoch of the fleet's figures
/// has them.
///
/// A twentieth of the rate is kept in reserve, in equal parts, so that a
/// node the member starts calling through admits some calls before its
/// demand is known; the rest goes by demand, max-min fair: a node asking
/// less than an equal part of what is left gets what it asks, the others
/// share the remainder. What no node asks for is shared equally. With no
/// demand anywhere, equal shares. The shares of all nodes sum to 1.
pub fn share(rate: f64, demands: &[f64], me: usize) -> f64 {
    let nodes = demands.len();
    if nodes <= 1 || me >= nodes || rate <= 0.0 {
        return 1.0;
    }
    let clean = |demand: f64| {
        if demand.is_finite() {
            demand.max(0.0)
        } else {
            0.0
        }
    };
    let equal = 1.0 / nodes as f64;
    if demands.iter().all(|demand| clean(*demand) == 0.0) {
        return equal;
    }
    let mut order: Vec<usize> = (0..nodes).collect();
    order.sort_by(|a, b| clean(demands[*a]).total_cmp(&clean(demands[*b])));
    let mut left = rate * (1.0 - RESERVE);
    let mut mine = 0.0;
    for (place, node) in order.iter().enumerate() {
        let part = left / (nodes - place) as f64;
        let given = clean(demands[*node]).min(part);
        left -= given;
        if *node == me {
            mine = given;
        }
    }
    (rate * RESERVE * equal + mine + left * equal) / rate
}

/// A count of calls in flight with a cap checked on entry.
#[derive(Debug, Default)]
struct CallCount(AtomicU32);

impl CallCount {
    /// Counts one more call if fewer than `max` are in flight.
    fn enter(self: &Arc<Self>, max: u32) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < max).then_some(count + 1)
            })
            .ok()?;
        Some(Slot(Arc::clone(self)))
    }
}

/// One call counted in a [`CallCount`] until dropped.
#[derive(Debug)]
struct Slot(Arc<CallCount>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call permitted under the limits: it counts as in flight, for the
/// gateway and for its caller, until this is dropped.
#[derive(Debug)]
pub struct CallPermit {
    _gateway: Slot,
    _member: Option<Slot>,
    /// The caller a partner's gateway asserted, counted on its own.
    _asserted: Option<Slot>,
    max_message_bytes: NonZeroU32,
}

impl CallPermit {
    /// The size check for this call's request messages; a refusal is
    /// counted in `metrics` for `member`.
    pub fn message_limit(&self, metrics: &Arc<Metrics>, member: &MemberId) -> MessageSizeLimit {
        MessageSizeLimit::new(self.max_message_bytes).counted(metrics.clone(), member.clone())
    }
}

/// How long a caller refused for calls in flight should wait: a call
/// typically ends within this.
const CONCURRENCY_PUSHBACK: Duration = Duration::from_millis(100);
/// The longest a fleet's node tells a rate-limited caller to wait: about
/// when its share of the member's rate may have grown.
const FLEET_PUSHBACK: Duration = Duration::from_secs(3);
/// How long a caller shed by an overloaded gateway should wait: longer,
/// so that retries do not keep the overload going.
const OVERLOAD_PUSHBACK: Duration = Duration::from_secs(1);

impl Limits {
    /// The limits a configuration sets, with full buckets and no call in
    /// flight.
    fn new(config: &LimitsConfig) -> Self {
        Self {
            gateway_max: config.gateway_concurrent_calls,
            gateway: Arc::default(),
            fleet_nodes: Arc::new(AtomicU32::new(1)),
            members: config
                .members
                .iter()
                .map(|(member, limits)| (member.clone(), MemberLimiter::new(*limits)))
                .collect(),
        }
    }

    /// The limits a configuration sets, taking over the state of those it
    /// replaces, if any: calls in flight keep counting, and buckets whose
    /// rate did not change keep their level.
    pub fn after(config: &LimitsConfig, previous: Option<&Limits>) -> Self {
        let mut limits = Self::new(config);
        if let Some(previous) = previous {
            limits.inherit(previous);
        }
        limits
    }

    fn inherit(&mut self, previous: &Limits) {
        self.gateway = Arc::clone(&previous.gateway);
        self.fleet_nodes = Arc::clone(&previous.fleet_nodes);
        let equal = 1.0 / f64::from(self.fleet_nodes.load(Ordering::Relaxed).max(1));
        for (member, limiter) in &mut self.members {
            let old = previous.members.get(member);
            if let Some(old) = old {
                limiter.in_flight = Arc::clone(&old.in_flight);
                limiter.attempts = Arc::clone(&old.attempts);
            }
            match (&mut limiter.bucket, old.and_then(|old| old.bucket.as_ref())) {
                (Some(new), Some(old)) if old.rate == new.rate => *new = Arc::clone(old),
                // A new rate starts full, at the node's share of the old.
                (Some(new), Some(old)) => new.set_share(old.share(), Instant::now()),
                // A member limited anew takes an equal part until the
                // fleet's figures say more.
                (Some(new), None) => new.set_share(equal, Instant::now()),
                (None, _) => {}
            }
        }
    }

    /// Admits a call by `member`, or refuses it with `RESOURCE_EXHAUSTED`.
    /// A call refused for its rate leaves the counts as they were; one
    /// refused for calls in flight has spent a token.
    pub fn permit(&self, member: &MemberId) -> Result<CallPermit, GatewayError> {
        let gateway =
            self.gateway
                .enter(self.gateway_max.get())
                .ok_or(GatewayError::Overloaded {
                    limit: self.gateway_max.get(),
                    retry_after: OVERLOAD_PUSHBACK,
                })?;
        let (member, max_message_bytes) = self.member_slot(member)?;
        Ok(CallPermit {
            _gateway: gateway,
            _member: member,
            _asserted: None,
            max_message_bytes,
        })
    }

    /// `permit`, a partner's gateway's, held for `caller` too, the member
    /// that gateway asserted: a partner's member gets no more than its
    /// own limits allow, whichever gateway it comes through, and one
    /// partner member's flood does not take the others' share. The
    /// smaller message size of the two applies.
    pub fn with_asserted(
        &self,
        permit: CallPermit,
        caller: &MemberId,
    ) -> Result<CallPermit, GatewayError> {
        let (asserted, max_message_bytes) = self.member_slot(caller)?;
        Ok(CallPermit {
            _asserted: asserted,
            max_message_bytes: permit.max_message_bytes.min(max_message_bytes),
            ..permit
        })
    }

    /// `member`'s rate and calls in flight: its slot (none without an
    /// entry: the defaults), and its largest message.
    fn member_slot(&self, member: &MemberId) -> Result<(Option<Slot>, NonZeroU32), GatewayError> {
        let Some(limiter) = self.members.get(member) else {
            // The defaults: a member without an entry, or a partner's
            // asserted caller not registered here (refused as such once
            // its assertion's nonce is taken).
            return Ok((None, MemberLimits::default().max_message_bytes));
        };
        if let (Some(rate), Some(bucket)) = (limiter.limits.rate, &limiter.bucket) {
            limiter.attempts.fetch_add(1, Ordering::Relaxed);
            if let Err(mut wait) = bucket.take(Instant::now()) {
                // A node's share may grow within seconds (the member's
                // calls came to it): told more, a client would wait for a
                // share it no longer has.
                if self.fleet_nodes.load(Ordering::Relaxed) > 1 {
                    wait = wait.min(FLEET_PUSHBACK);
                }
                return Err(GatewayError::RateLimited {
                    member: member.clone(),
                    per_second: rate.per_second.get(),
                    burst: rate.burst.get(),
                    retry_after: wait.max(Duration::from_millis(1)),
                });
            }
        }
        let cap = limiter
            .limits
            .concurrent_calls
            .map_or(u32::MAX, NonZeroU32::get);
        let Some(slot) = limiter.in_flight.enter(cap) else {
            return Err(GatewayError::TooManyCalls {
                member: member.clone(),
                limit: cap,
                retry_after: CONCURRENCY_PUSHBACK,
            });
        };
        Ok((Some(slot), limiter.limits.max_message_bytes))
    }

    /// Each rate-limited member's calls a second through this node since
    /// the last time this was asked, `over` ago: what the node reports to
    /// the fleet. Members without a call are left out.
    pub fn take_demand(&self, over: Duration) -> Vec<(MemberId, f64)> {
        let seconds = over.as_secs_f64().max(1e-3);
        self.members
            .iter()
            .filter(|(_, limiter)| limiter.bucket.is_some())
            .filter_map(|(member, limiter)| {
                let attempts = limiter.attempts.swap(0, Ordering::Relaxed);
                (attempts > 0).then(|| (member.clone(), attempts as f64 / seconds))
            })
            .collect()
    }

    /// Shares each member's rate by the fleet's figures: this node, `me`,
    /// takes the smaller of its shares in the two latest closed epochs
    /// (see [`crate::database::rates`]). In an epoch it did not report in
    /// (it has just started, or its reports failed), it takes an equal
    /// part of `up` nodes until it is in the figures.
    pub fn share_out(&self, epochs: &Snapshots, me: &str, up: usize) {
        let counted = [&epochs.latest, &epochs.before]
            .iter()
            .map(|epoch| epoch.nodes.len())
            .max()
            .unwrap_or(0)
            .max(1);
        self.fleet_nodes.store(
            u32::try_from(counted).unwrap_or(u32::MAX).max(1),
            Ordering::Relaxed,
        );
        let equal = 1.0 / up.max(1) as f64;
        let now = Instant::now();
        for (member, limiter) in &self.members {
            let (Some(rate), Some(bucket)) = (limiter.limits.rate, &limiter.bucket) else {
                continue;
            };
            let rate = f64::from(rate.per_second.get());
            let in_epoch = |epoch: &Snapshot| {
                let Some(me) = epoch.position(me) else {
                    return equal;
                };
                let asked: Vec<f64> = epoch
                    .nodes
                    .iter()
                    .map(|(_, demand)| demand.get(member.as_str()).copied().unwrap_or(0.0))
                    .collect();
                share(rate, &asked, me)
            };
            let (latest, before) = (in_epoch(&epochs.latest), in_epoch(&epochs.before));
            tracing::debug!(%member, latest, before, "a member's rate shared");
            bucket.set_share(latest.min(before), now);
        }
    }

    /// The nodes a member's rate is shared among.
    pub fn fleet_nodes(&self) -> u32 {
        self.fleet_nodes.load(Ordering::Relaxed)
    }

    /// The gateway-wide cap on calls in flight.
    pub fn gateway_concurrent_calls(&self) -> u32 {
        self.gateway_max.get()
    }
}

/// Reads the 5-byte prefixes of a request's gRPC messages (flag, then the
/// length, big-endian) as the bytes pass, frame by frame, and refuses a
/// message announced larger than the limit.
///
/// Messages may span frames and frames may hold several messages; only
/// the prefix being read is kept (at most four bytes), never a message.
#[derive(Debug)]
pub struct MessageSizeLimit {
    max: NonZeroU32,
    prefix: [u8; 5],
    /// Bytes of `prefix` read so far.
    prefix_read: usize,
    /// Bytes of the current message still to pass.
    remaining: u64,
    /// Where a refusal is counted.
    counted: Option<(Arc<Metrics>, MemberId)>,
}

impl MessageSizeLimit {
    /// Messages of at most `max` bytes pass.
    pub fn new(max: NonZeroU32) -> Self {
        Self {
            max,
            prefix: [0; 5],
            prefix_read: 0,
            remaining: 0,
            counted: None,
        }
    }

    fn counted(mut self, metrics: Arc<Metrics>, member: MemberId) -> Self {
        self.counted = Some((metrics, member));
        self
    }

    /// Reads `data`, the next bytes of the request. A prefix in it that
    /// announces a message over the limit refuses the call: `data` must
    /// then not be relayed.
    pub fn check(&mut self, mut data: &[u8]) -> Result<(), GatewayError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skipped = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= skipped as u64;
                data = &data[skipped..];
                continue;
            }
            let taken = data.len().min(5 - self.prefix_read);
            self.prefix[self.prefix_read..self.prefix_read + taken].copy_from_slice(&data[..taken]);
            self.prefix_read += taken;
            data = &data[taken..];
            if self.prefix_read == 5 {
                self.prefix_read = 0;
                let [_, a, b, c, d] = self.prefix;
                let announced = u32::from_be_bytes([a, b, c, d]);
                if announced > self.max.get() {
                    if let Some((metrics, member)) = &self.counted {
                        metrics.limit_refusal(member, "message-too-large");
                    }
                    return Err(GatewayError::MessageTooLarge {
                        limit: self.max.get(),
                        announced,
                    });
                }
                self.remaining = u64::from(announced);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&length.to_be_bytes());
        framed.resize(5 + length as usize, 7);
        framed
    }

    fn limit(max: u32) -> MessageSizeLimit {
        MessageSizeLimit::new(NonZeroU32::new(max).unwrap())
    }

    fn too_large(result: Result<(), GatewayError>) -> Option<u32> {
        match result {
            Err(GatewayError::MessageTooLarge { announced, .. }) => Some(announced),
            Ok(()) => None,
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn messages_at_the_limit_pass_in_any_framing() {
        let stream = [message(10), message(0), message(3), message(10)].concat();
        // Whole, byte by byte, and in every two-way split.
        assert_eq!(too_large(limit(10).check(&stream)), None);
        let mut reader = limit(10);
        for byte in &stream {
            assert_eq!(too_large(reader.check(std::slice::from_ref(byte))), None);
        }
        for split in 0..stream.len() {
            let mut reader = limit(10);
            let (a, b) = stream.split_at(split);
            assert_eq!(too_large(reader.check(a)), None);
            assert_eq!(too_large(reader.check(b)), None);
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_at_its_prefix() {
        // The second message of a frame.
        let stream = [message(3), message(11)].concat();
        assert_eq!(too_large(limit(10).check(&stream)), Some(11));
        // Its prefix split across frames: refused at the prefix's last
        // byte, before any byte of the message.
        let mut reader = limit(10);
        assert_eq!(too_large(reader.check(&stream[..10])), None);
        assert_eq!(too_large(reader.check(&stream[10..12])), None);
        assert_eq!(too_large(reader.check(&stream[12..13])), Some(11));
        // A prefix announcing 4 GiB is read, not trusted.
        assert_eq!(
            too_large(limit(u32::MAX - 1).check(&[1, 0xff, 0xff, 0xff, 0xff])),
            Some(u32::MAX)
        );
    }

    #[test]
    fn message_bodies_are_skipped_not_read_as_prefixes() {
        // A body that looks like a huge prefix.
        let mut stream = vec![0, 0, 0, 0, 5, 0, 0xff, 0xff, 0xff, 0xff];
        stream.extend_from_slice(&message(2));
        let mut reader = limit(5);
        assert_eq!(too_large(reader.check(&stream[..7])), None);
        assert_eq!(too_large(reader.check(&stream[7..])), None);
    }

    fn config(members: &[(&str, MemberLimits)], gateway: u32) -> LimitsConfig {
        LimitsConfig {
            gateway_concurrent_calls: NonZeroU32::new(gateway).unwrap(),
            members: members
                .iter()
                .map(|(id, limits)| (MemberId::parse(id).unwrap(), *limits))
                .collect(),
        }
    }

    fn capped(calls: u32) -> MemberLimits {
        MemberLimits {
            concurrent_calls: NonZeroU32::new(calls),
            ..MemberLimits::default()
        }
    }

    fn rated(per_second: u32, burst: u32) -> MemberLimits {
        MemberLimits {
            rate: Some(RateLimit {
                per_second: NonZeroU32::new(per_second).unwrap(),
                burst: NonZeroU32::new(burst).unwrap(),
            }),
            ..MemberLimits::default()
        }
    }

    const A: &str = "SN/COM/CBAO/kyc";
    const B: &str = "SN/GOV/DGCPT/treasury";

    fn kind(result: Result<CallPermit, GatewayError>) -> &'static str {
        result.map_or_else(|error| error.kind(), |_| "permitted")
    }

    #[test]
    fn calls_in_flight_are_capped_per_member_and_for_the_gateway() {
        let limits = Limits::new(&config(&[(A, capped(2)), (B, capped(5))], 3));
        let (a, b) = (MemberId::parse(A).unwrap(), MemberId::parse(B).unwrap());
        let first = limits.permit(&a).unwrap();
        let second = limits.permit(&a).unwrap();
        assert_eq!(kind(limits.permit(&a)), "too-many-calls");
        let third = limits.permit(&b).unwrap();
        assert_eq!(kind(limits.permit(&b)), "gateway-overloaded");
        drop(first);
        assert_eq!(kind(limits.permit(&b)), "permitted");
        drop((second, third));
    }

    /// An epoch in which node `n<i>` reported `per_node[i]` calls a second
    /// of member A.
    fn epoch(per_node: &[f64]) -> Snapshot {
        Snapshot {
            nodes: per_node
                .iter()
                .enumerate()
                .map(|(n, demand)| (format!("n{n}"), HashMap::from([(A.to_owned(), *demand)])))
                .collect(),
        }
    }

    /// Node `n<me>` shares by two epochs of the same figures.
    fn share_out(limits: &Limits, per_node: &[f64], me: usize) {
        let epochs = Snapshots {
            latest: epoch(per_node),
            before: epoch(per_node),
        };
        limits.share_out(&epochs, &format!("n{me}"), per_node.len());
    }

    #[test]
    fn in_a_fleet_each_node_takes_its_share_of_the_burst_and_gives_it_back() {
        let limits = Limits::new(&config(&[(A, rated(1, 9))], 100));
        let a = MemberId::parse(A).unwrap();
        let burst = |limits: &Limits| {
            (0..20)
                .take_while(|_| kind(limits.permit(&a)) == "permitted")
                .count()
        };
        // Three nodes up, no demand known: a third of the burst here.
        share_out(&limits, &[0.0, 0.0, 0.0], 0);
        assert_eq!(limits.fleet_nodes(), 3);
        assert_eq!(burst(&limits), 3);
        // The others left: the whole rate, but no fresh burst.
        share_out(&limits, &[0.0], 0);
        assert_eq!(limits.members[&a].bucket.as_ref().unwrap().share(), 1.0);
        assert_eq!(kind(limits.permit(&a)), "rate-limited");
        // A reload keeps the fleet's size and the bucket's level.
        let reloaded = Limits::after(&config(&[(A, rated(1, 9))], 100), Some(&limits));
        assert_eq!(reloaded.fleet_nodes(), 1);
        assert_eq!(kind(reloaded.permit(&a)), "rate-limited");
        // Each reported the calls attempted since last asked, once.
        let demand = reloaded.take_demand(Duration::from_secs(1));
        assert_eq!(demand, [(a.clone(), 6.0)]);
        assert!(reloaded.take_demand(Duration::from_secs(1)).is_empty());
    }

    /// One share per node, by demand: a member calling through one node
    /// gets nearly its whole rate there; the shares sum to the rate.
    #[test]
    fn shares_follow_demand_and_sum_to_the_rate() {
        let sum = |rate: f64, demands: &[f64]| -> f64 {
            (0..demands.len()).map(|me| share(rate, demands, me)).sum()
        };
        // Nothing asked: equal parts.
        assert_eq!(share(30.0, &[0.0, 0.0, 0.0], 1), 1.0 / 3.0);
        // All of it through one node: all but the others' reserve.
        let one = share(30.0, &[120.0, 0.0, 0.0], 0);
        assert!((one - (0.95 + 0.05 / 3.0)).abs() < 1e-9, "{one}");
        assert!(share(30.0, &[120.0, 0.0, 0.0], 1) < 0.02);
        // Max-min fair: the node asking 10 calls a second gets them (and
        // its reserve); the other the rest.
        let small = share(30.0, &[10.0, 100.0], 0) * 30.0;
        assert!((small - 10.75).abs() < 1e-9, "{small}");
        // Less asked than the rate: what is left is shared equally.
        let light = share(30.0, &[4.0, 2.0], 0) * 30.0;
        assert!((light - (0.75 + 4.0 + 11.25)).abs() < 1e-9, "{light}");
        for demands in [
            &[0.0, 0.0][..],
            &[1.0, 0.0, 7.0],
            &[50.0, 50.0, 50.0, 1.0],
            &[f64::NAN, -3.0, 10.0],
            &[1e12, 1e-12, 0.0],
        ] {
            let total = sum(30.0, demands);
            assert!((total - 1.0).abs() < 1e-9, "{demands:?}: {total}");
        }
        assert_eq!(share(30.0, &[5.0], 0), 1.0);
    }

    /// A node takes the smaller of its shares in the two latest epochs:
    /// whichever of them its peers have read, the shares in force sum to
    /// no more than the rate. In an epoch it is not in, an equal part.
    #[test]
    fn a_share_is_the_smaller_of_two_epochs() {
        let limits = Limits::new(&config(&[(A, rated(10, 10))], 100));
        let a = MemberId::parse(A).unwrap();
        let now = || limits.members[&a].bucket.as_ref().unwrap().share();
        let shared = |latest: &[f64], before: &[f64]| {
            let epochs = Snapshots {
                latest: epoch(latest),
                before: epoch(before),
            };
            limits.share_out(&epochs, "n0", 2);
            now()
        };
        assert_eq!(shared(&[0.0, 0.0], &[0.0, 0.0]), 0.5);
        // The member's calls came here: the share grows an epoch late.
        assert_eq!(shared(&[100.0, 0.0], &[0.0, 0.0]), 0.5);
        assert!((shared(&[100.0, 0.0], &[100.0, 0.0]) - 0.975).abs() < 1e-9);
        // They left: it shrinks at once.
        assert!((shared(&[0.0, 100.0], &[100.0, 0.0]) - 0.025).abs() < 1e-9);
        // Not in the figures yet (just started): an equal part of the
        // nodes up.
        limits.share_out(&Snapshots::default(), "n0", 4);
        assert_eq!(now(), 0.25);
        assert_eq!(limits.fleet_nodes(), 1);
        limits.share_out(&Snapshots::default(), "n0", 1);
        assert_eq!(now(), 1.0);
    }

    /// In a fleet, a refused caller is told to retry within seconds, when
    /// its node's share may have grown; a member limited anew by a reload
    /// takes an equal part of the fleet's rate, not all of it on each node.
    #[test]
    fn in_a_fleet_pushback_is_short_and_a_new_limit_starts_shared() {
        let limits = Limits::new(&config(&[(A, rated(1, 1))], 100));
        let a = MemberId::parse(A).unwrap();
        share_out(&limits, &[0.0, 100.0, 100.0, 100.0, 100.0, 100.0], 0);
        assert_eq!(kind(limits.permit(&a)), "permitted");
        let wait = limits.permit(&a).unwrap_err().retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(2) && wait <= FLEET_PUSHBACK,
            "{wait:?}"
        );
        let b = MemberId::parse(B).unwrap();
        let reloaded = Limits::after(
            &config(&[(A, rated(1, 1)), (B, rated(60, 60))], 100),
            Some(&limits),
        );
        let burst = (0..100)
            .take_while(|_| kind(reloaded.permit(&b)) == "permitted")
            .count();
        assert_eq!(burst, 10);
    }

    /// A new share changes the refill, not the level: a node whose share
    /// grows gets no fresh burst, and one whose share shrinks keeps at
    /// most its new burst.
    #[test]
    fn a_new_share_keeps_the_level() {
        let limits = Limits::new(&config(&[(A, rated(1, 10))], 100));
        let a = MemberId::parse(A).unwrap();
        share_out(&limits, &[0.0, 0.0, 0.0, 0.0, 0.0], 0);
        // A fifth of the burst: 2.
        assert_eq!(kind(limits.permit(&a)), "permitted");
        assert_eq!(kind(limits.permit(&a)), "permitted");
        assert_eq!(kind(limits.permit(&a)), "rate-limited");
        // The fleet changes size twice: still nothing until it refills.
        share_out(&limits, &[0.0, 0.0], 0);
        share_out(&limits, &[0.0, 0.0, 0.0], 0);
        let refused = limits.permit(&a).unwrap_err();
        assert_eq!(refused.kind(), "rate-limited");
        // A third of one call a second: one token in about three seconds.
        let wait = refused.retry_after().unwrap();
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_secs(3),
            "{wait:?}"
        );
    }

    #[test]
    fn the_bucket_refuses_past_its_burst_and_says_when_to_retry() {
        let limits = Limits::new(&config(&[(A, rated(1, 3)), (B, rated(1, 1))], 100));
        let (a, b) = (MemberId::parse(A).unwrap(), MemberId::parse(B).unwrap());
        for _ in 0..3 {
            assert_eq!(kind(limits.permit(&a)), "permitted");
        }
        let refused = limits.permit(&a).unwrap_err();
        assert_eq!(refused.kind(), "rate-limited");
        let wait = refused.retry_after().unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another member's bucket is its own.
        assert_eq!(kind(limits.permit(&b)), "permitted");
    }

    #[test]
    fn a_reload_keeps_counts_and_unchanged_buckets() {
        let old = Limits::new(&config(&[(A, rated(1, 2)), (B, capped(1))], 100));
        let (a, b) = (MemberId::parse(A).unwrap(), MemberId::parse(B).unwrap());
        let _a1 = old.permit(&a).unwrap();
        let _a2 = old.permit(&a).unwrap();
        let _b1 = old.permit(&b).unwrap();
        let new = Limits::after(
            &config(&[(A, rated(1, 2)), (B, capped(1))], 100),
            Some(&old),
        );
        assert_eq!(kind(new.permit(&a)), "rate-limited");
        assert_eq!(kind(new.permit(&b)), "too-many-calls");
        // A changed rate starts full.
        let changed = Limits::after(
            &config(&[(A, rated(2, 2)), (B, capped(2))], 100),
            Some(&old),
        );
        assert_eq!(kind(changed.permit(&a)), "permitted");
        let _b2 = changed.permit(&b).unwrap();
        assert_eq!(kind(changed.permit(&b)), "too-many-calls");
    }
}
