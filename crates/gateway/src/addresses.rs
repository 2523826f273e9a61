//! Connections counted by source address, capped: the partners'
//! listener, the admin endpoint and a directory's server each keep one
//! address from taking every place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per source address, capped.
#[derive(Debug)]
pub(crate) struct AddressSlots {
    limit: u32,
    held: Mutex<HashMap<IpAddr, Held>>,
}

#[derive(Debug, Default)]
struct Held {
    count: u32,
    /// Whether the refusal of this address was logged since it reached
    /// the cap: one line per episode, not one per connection of a flood.
    logged: bool,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address is at its cap; first refusal since it got there.
    AtLimit,
    /// The address is at its cap, and that was logged already.
    AtLimitAgain,
}

impl AddressSlots {
    pub(crate) fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::default(),
        })
    }

    /// A slot for a connection from `address`, held until dropped.
    pub(crate) fn take(self: &Arc<Self>, address: IpAddr) -> Result<AddressSlot, Refusal> {
        let address = counted_as(address);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = held.entry(address).or_default();
        if entry.count >= self.limit {
            if entry.count == 0 {
                held.remove(&address);
                return Err(Refusal::AtLimitAgain);
            }
            return Err(if std::mem::replace(&mut entry.logged, true) {
                Refusal::AtLimitAgain
            } else {
                Refusal::AtLimit
            });
        }
        entry.count += 1;
        Ok(AddressSlot {
            slots: self.clone(),
            address,
        })
    }
}

/// The address a connection from `address` counts against: an IPv4
/// address (mapped into IPv6 or not) itself, an IPv6 address's /64, which
/// one host is commonly given whole and could otherwise spread a flood
/// over, one address per connection.
pub(crate) fn counted_as(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !u128::from(u64::MAX),
        )),
        v4 => v4,
    }
}

/// One connection's place in its address's count.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    slots: Arc<AddressSlots>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = held.get_mut(&self.address) {
            entry.count = entry.count.saturating_sub(1);
            entry.logged = false;
            if entry.count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_cap_and_no_more() {
        let slots = AddressSlots::new(2);
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        let first = slots.take(address);
        let second = slots.take(address);
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(slots.take(address).err(), Some(Refusal::AtLimit));
        assert_eq!(slots.take(address).err(), Some(Refusal::AtLimitAgain));
        // Another address is not affected; the same one over IPv6-mapped
        // IPv4 is the same address.
        assert!(slots.take(IpAddr::from([192, 0, 2, 8])).is_ok());
        let mapped = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(slots.take(mapped).err(), Some(Refusal::AtLimitAgain));
        drop(first);
        let third = slots.take(address);
        assert!(third.is_ok());
        drop((second, third));
        assert!(
            slots.held.lock().unwrap().get(&address).is_none(),
            "an address with no connection is forgotten"
        );
    }

    /// An IPv6 host cannot spread its connections over the addresses of
    /// its /64; the next /64 is another's.
    #[test]
    fn an_ipv6_slash_64_gets_one_cap() {
        let slots = AddressSlots::new(2);
        let host = |address: &str| slots.take(address.parse().unwrap());
        let held = [host("2001:db8:1:2::1"), host("2001:db8:1:2:ffff::9")];
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(
            host("2001:db8:1:2:aaaa:bbbb:cccc:dddd").err(),
            Some(Refusal::AtLimit)
        );
        assert!(host("2001:db8:1:3::1").is_ok());
    }
}
