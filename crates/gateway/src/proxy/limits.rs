//! Limits: permits for calls under load, and the size of request
//! messages.
//!
//! Every call first passes [`Limits::permit`]: a gateway-wide cap on calls
//! in flight (beyond it, calls are shed at once rather than queued), then
//! the caller's token bucket (requests per second, `governor`), then the
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

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};

use super::error::GatewayError;
use crate::config::{LimitsConfig, MemberLimits, RateLimit};
use crate::identity::MemberId;
use crate::telemetry::metrics::Metrics;

/// The limits of one configuration, with the state that enforces them.
#[derive(Debug)]
pub struct Limits {
    gateway_max: NonZeroU32,
    /// Calls in flight through the whole gateway; shared across reloads.
    gateway: Arc<CallCount>,
    /// The nodes of the fleet that are up, this one included (1 without a
    /// fleet): each takes that share of a member's rate. Shared across
    /// reloads; the fleet's heartbeat sets it.
    fleet_nodes: Arc<AtomicU32>,
    members: HashMap<MemberId, MemberLimiter>,
}

#[derive(Debug)]
struct MemberLimiter {
    limits: MemberLimits,
    /// `None` when the member's rate is unlimited; else the bucket for the
    /// fleet size it was made for.
    bucket: Option<arc_swap::ArcSwap<ShareBucket>>,
    /// The member's calls in flight, counted even without a cap so that a
    /// cap set by a reload starts from the true count.
    in_flight: Arc<CallCount>,
}

impl MemberLimiter {
    fn new(limits: MemberLimits, nodes: u32) -> Self {
        Self {
            limits,
            bucket: limits
                .rate
                .map(|rate| arc_swap::ArcSwap::from_pointee(ShareBucket::new(rate, nodes))),
            in_flight: Arc::default(),
        }
    }

    /// The bucket for a fleet of `nodes`, made anew (full) when the fleet
    /// changed size.
    fn bucket(&self, rate: RateLimit, nodes: u32) -> Option<arc_swap::Guard<Arc<ShareBucket>>> {
        let bucket = self.bucket.as_ref()?;
        let current = bucket.load();
        if current.nodes == nodes {
            return Some(current);
        }
        // One new bucket per change, whoever sees it first: callers racing
        // here must not each get a full one.
        let _ = bucket.compare_and_swap(&*current, Arc::new(ShareBucket::new(rate, nodes)));
        Some(bucket.load())
    }
}

/// One node's share of a member's token bucket: `1/nodes` of its rate and
/// of its burst (at least one call), so that the fleet together admits
/// the member's rate when its calls are spread over the nodes.
#[derive(Debug)]
struct ShareBucket {
    nodes: u32,
    limiter: DefaultDirectRateLimiter,
}

impl ShareBucket {
    fn new(rate: RateLimit, nodes: u32) -> Self {
        let nodes = nodes.max(1);
        let quota = if nodes == 1 {
            Quota::per_second(rate.per_second)
        } else {
            // One token every `nodes / per_second` seconds.
            let period =
                Duration::from_secs_f64(f64::from(nodes) / f64::from(rate.per_second.get()));
            Quota::with_period(period).unwrap_or_else(|| Quota::per_second(rate.per_second))
        };
        let burst = NonZeroU32::new(rate.burst.get().div_ceil(nodes)).unwrap_or(NonZeroU32::MIN);
        Self {
            nodes,
            limiter: DefaultDirectRateLimiter::direct(quota.allow_burst(burst)),
        }
    }
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
                .map(|(member, limits)| (member.clone(), MemberLimiter::new(*limits, 1)))
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
        for (member, limiter) in &mut self.members {
            let Some(old) = previous.members.get(member) else {
                continue;
            };
            limiter.in_flight = Arc::clone(&old.in_flight);
            if old.limits.rate == limiter.limits.rate
                && let (Some(new), Some(old)) = (&limiter.bucket, &old.bucket)
            {
                new.store(old.load_full());
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
            // Only registered members get this far; the defaults, should
            // one not have its entry.
            return Ok((None, MemberLimits::default().max_message_bytes));
        };
        let nodes = self.fleet_nodes.load(Ordering::Relaxed);
        if let Some(rate) = limiter.limits.rate
            && let Some(bucket) = limiter.bucket(rate, nodes)
            && let Err(not_until) = bucket.limiter.check()
        {
            let wait = not_until.wait_time_from(bucket.limiter.clock().now());
            return Err(GatewayError::RateLimited {
                member: member.clone(),
                per_second: rate.per_second.get(),
                burst: rate.burst.get(),
                retry_after: wait.max(Duration::from_millis(1)),
            });
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

    /// The fleet now has `nodes` nodes up (this one included): each
    /// member's rate is shared among them from the next call on.
    pub fn set_fleet_nodes(&self, nodes: u32) {
        self.fleet_nodes.store(nodes.max(1), Ordering::Relaxed);
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

    #[test]
    fn in_a_fleet_each_node_takes_its_share_of_the_burst_and_gives_it_back() {
        let limits = Limits::new(&config(&[(A, rated(1, 9))], 100));
        let a = MemberId::parse(A).unwrap();
        let burst = |limits: &Limits| {
            (0..20)
                .take_while(|_| kind(limits.permit(&a)) == "permitted")
                .count()
        };
        // Three nodes up: a third of the burst here.
        limits.set_fleet_nodes(3);
        assert_eq!(burst(&limits), 3);
        // The others left: the whole of it again (a bucket made anew).
        limits.set_fleet_nodes(1);
        assert_eq!(burst(&limits), 9);
        // Four nodes: a quarter, rounded up so that each node admits one.
        limits.set_fleet_nodes(4);
        assert_eq!(burst(&limits), 3);
        // A reload keeps the fleet's size.
        let reloaded = Limits::after(&config(&[(A, rated(1, 9))], 100), Some(&limits));
        assert_eq!(reloaded.fleet_nodes(), 4);
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
