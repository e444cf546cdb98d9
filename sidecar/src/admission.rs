//! Connection admission: how many TCP connections are open, in all and per client address, and
//! whether one more may be served.
//!
//! Invariants:
//! * Every accepted connection is counted by the [`Slot`] it holds until its socket closes
//!   (dropping the slot uncounts it), so the counts are open sockets, whatever they carry.
//! * A connection over `MAX_CONNECTIONS` or `MAX_CONNECTIONS_PER_IP` is not served but may
//!   still be *answered* (429): at most [`REFUSING`] such connections are open at once, and any
//!   beyond are closed unread. So however fast clients connect, this process never holds more
//!   than `MAX_CONNECTIONS + REFUSING` sockets — below the open-file limit, when
//!   `MAX_CONNECTIONS` is.
//! * One address is an IPv4 address or an IPv6 /64 (a host usually owns a whole /64);
//!   IPv4-mapped IPv6 addresses count as their IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::ConnectError;

/// Refused connections that may be open at once, waiting for their 429 reply.
pub const REFUSING: usize = 256;

pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Default)]
struct Counts {
    /// Served connections.
    total: usize,
    /// Refused connections still open.
    refusing: usize,
    /// Served connections by address (no entry at zero).
    per_address: HashMap<IpAddr, usize>,
}

/// What to do with a new connection.
pub enum Admit {
    Serve(Slot),
    /// Answer every request with this error (`/healthcheck` excepted), then close.
    Refuse(Slot, ConnectError),
    /// Close at once, unread.
    Drop,
}

/// A connection's place in the counts, given back on drop.
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    /// `None` for a refused connection.
    address: Option<IpAddr>,
}

impl Admission {
    pub fn new(max_total: u32, max_per_address: u32) -> Self {
        Admission {
            max_total: max_total as usize,
            max_per_address: max_per_address as usize,
            counts: Arc::default(),
        }
    }

    /// Count a new connection from `ip`.
    pub fn admit(&self, ip: IpAddr) -> Admit {
        let address = address_of(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
        let refusal = if counts.total >= self.max_total {
            ConnectError::TooManyConnections
        } else if from_address >= self.max_per_address {
            ConnectError::TooManyFromAddress
        } else {
            counts.total += 1;
            counts.per_address.insert(address, from_address + 1);
            return Admit::Serve(self.slot(Some(address)));
        };
        if counts.refusing >= REFUSING {
            return Admit::Drop;
        }
        counts.refusing += 1;
        Admit::Refuse(self.slot(None), refusal)
    }

    /// Served connections open now.
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    fn slot(&self, address: Option<IpAddr>) -> Slot {
        Slot {
            counts: self.counts.clone(),
            address,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(address) = self.address else {
            counts.refusing = counts.refusing.saturating_sub(1);
            return;
        };
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&address);
            }
        }
    }
}

/// The address `ip` is counted under.
fn address_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn caps_per_address_and_in_all() {
        let admission = Admission::new(3, 2);
        let a1 = admission.admit(ip("10.0.0.1"));
        let a2 = admission.admit(ip("10.0.0.1"));
        assert!(matches!(
            admission.admit(ip("10.0.0.1")),
            Admit::Refuse(_, ConnectError::TooManyFromAddress)
        ));
        let b1 = admission.admit(ip("10.0.0.2"));
        assert!(matches!(b1, Admit::Serve(_)));
        assert!(matches!(
            admission.admit(ip("10.0.0.3")),
            Admit::Refuse(_, ConnectError::TooManyConnections)
        ));
        assert_eq!(admission.open(), 3);
        drop(a1);
        assert!(matches!(admission.admit(ip("10.0.0.3")), Admit::Serve(_)));
        drop((a2, b1));
        assert_eq!(admission.open(), 0, "slots given back on drop");
    }

    #[test]
    fn refused_connections_are_bounded() {
        let admission = Admission::new(1, 1);
        let _served = admission.admit(ip("10.0.0.1"));
        let refused: Vec<Admit> = (0..REFUSING)
            .map(|_| admission.admit(ip("10.0.0.1")))
            .collect();
        assert!(refused.iter().all(|a| matches!(a, Admit::Refuse(..))));
        assert!(matches!(admission.admit(ip("10.0.0.9")), Admit::Drop));
        drop(refused);
        assert!(matches!(admission.admit(ip("10.0.0.9")), Admit::Refuse(..)));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address() {
        assert_eq!(
            address_of(ip("2001:db8::1")),
            address_of(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            address_of(ip("2001:db8::1")),
            address_of(ip("2001:db8:0:1::1"))
        );
        assert_eq!(address_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
