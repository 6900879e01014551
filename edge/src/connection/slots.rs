//! Caps on open sockets, in all and per client address. A slot is taken before the upgrade and
//! given back when the socket's task ends (the [`SocketSlot`] drops).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// `WS_MAX_SOCKETS` reached.
    Full,
    /// `WS_MAX_SOCKETS_PER_ADDR` reached for this address.
    AddressFull,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_addr: HashMap<IpAddr, usize>,
}

/// The open sockets of this edge.
#[derive(Debug, Clone)]
pub struct SocketSlots {
    max_total: usize,
    max_per_addr: usize,
    counts: Arc<Mutex<Counts>>,
}

impl SocketSlots {
    pub fn new(max_total: usize, max_per_addr: usize) -> Self {
        Self {
            max_total,
            max_per_addr,
            counts: Arc::default(),
        }
    }

    /// Takes a slot for a socket of `addr`, or says why there is none.
    pub fn take(&self, addr: IpAddr) -> Result<SocketSlot, SlotRefused> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max_total {
            return Err(SlotRefused::Full);
        }
        let mine = counts.per_addr.entry(addr).or_default();
        if *mine >= self.max_per_addr {
            return Err(SlotRefused::AddressFull);
        }
        *mine += 1;
        counts.total += 1;
        Ok(SocketSlot {
            addr,
            counts: self.counts.clone(),
        })
    }
}

/// One open socket's place; released on drop.
#[derive(Debug)]
pub struct SocketSlot {
    addr: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl SocketSlot {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_addr.get_mut(&self.addr) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                counts.per_addr.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_all_and_releases_on_drop() {
        let slots = SocketSlots::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), SlotRefused::AddressFull);
        let _third = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), SlotRefused::Full);
        drop(first);
        assert!(slots.take(a).is_ok());
        assert!(slots.counts.lock().unwrap().per_addr.len() <= 2);
    }
}
