//! The bounded cache of symbolized addresses, by (pid, address).
//!
//! Two generations approximate an LRU in O(1): entries go into the young generation; when it is
//! full it becomes the old one and the previous old generation is dropped; a hit in the old
//! generation moves the entry back to the young one. So at most `capacity` entries are held,
//! and an entry used at least once per `capacity / 2` insertions stays. Each generation keeps
//! one map per process, so forgetting a process is one removal, not a scan.

use std::{collections::HashMap, mem};

use super::frame::Frame;

/// Frames of one looked-up address (several when the address is in inlined code).
pub type Frames = Box<[Frame]>;

#[derive(Debug, Default)]
struct Generation {
    by_pid: HashMap<u32, HashMap<u64, Frames>>,
    len: usize,
}

impl Generation {
    fn take(&mut self, pid: u32, addr: u64) -> Option<Frames> {
        let addrs = self.by_pid.get_mut(&pid)?;
        let frames = addrs.remove(&addr)?;
        if addrs.is_empty() {
            self.by_pid.remove(&pid);
        }
        self.len -= 1;
        Some(frames)
    }

    fn insert(&mut self, pid: u32, addr: u64, frames: Frames) {
        if self.by_pid.entry(pid).or_default().insert(addr, frames).is_none() {
            self.len += 1;
        }
    }

    fn forget(&mut self, pid: u32) {
        if let Some(addrs) = self.by_pid.remove(&pid) {
            self.len -= addrs.len();
        }
    }
}

#[derive(Debug)]
pub struct FrameCache {
    young: Generation,
    old: Generation,
    /// Entries the young generation takes before it is aged.
    generation_capacity: usize,
}

impl FrameCache {
    /// A cache holding at most `capacity` addresses (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            young: Generation::default(),
            old: Generation::default(),
            generation_capacity: (capacity / 2).max(1),
        }
    }

    /// The frames of `addr` in process `pid`, if cached.
    pub fn get(&mut self, pid: u32, addr: u64) -> Option<&[Frame]> {
        if let Some(frames) = self.old.take(pid, addr) {
            self.insert(pid, addr, frames);
        }
        self.young.by_pid.get(&pid)?.get(&addr).map(|frames| &**frames)
    }

    pub fn insert(&mut self, pid: u32, addr: u64, frames: Frames) {
        // Kept in one generation only, so that `len` counts each address once.
        self.old.take(pid, addr);
        if self.young.len >= self.generation_capacity {
            self.old = mem::take(&mut self.young);
        }
        self.young.insert(pid, addr, frames);
    }

    /// Drops every address of `pid`.
    pub fn forget(&mut self, pid: u32) {
        self.young.forget(pid);
        self.old.forget(pid);
    }

    /// Addresses held.
    pub fn len(&self) -> usize {
        self.young.len + self.old.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(addr: u64) -> Frames {
        Box::new([Frame::unknown(addr, None)])
    }

    #[test]
    fn returns_what_was_inserted_per_process() {
        let mut cache = FrameCache::new(16);
        cache.insert(1, 0x1000, frames(0x1000));
        cache.insert(2, 0x1000, frames(0x2000));
        assert_eq!(cache.get(1, 0x1000).unwrap()[0].addr, 0x1000);
        assert_eq!(cache.get(2, 0x1000).unwrap()[0].addr, 0x2000);
        assert!(cache.get(3, 0x1000).is_none());
        assert!(cache.get(1, 0x2000).is_none());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut cache = FrameCache::new(100);
        for addr in 0..10_000 {
            cache.insert((addr % 7) as u32, addr, frames(addr));
            assert!(cache.len() <= 100, "{} entries after {addr} insertions", cache.len());
        }
        assert!(cache.len() >= 50, "a full cache keeps at least one generation");
        // The most recent insertions are still there, the first ones are gone.
        assert!(cache.get((9_999 % 7) as u32, 9_999).is_some());
        assert!(cache.get(0, 0).is_none());
    }

    #[test]
    fn reinserting_an_address_does_not_count_it_twice() {
        let mut cache = FrameCache::new(4);
        for _ in 0..10 {
            cache.insert(1, 0x1000, frames(0x1000));
        }
        assert_eq!(cache.len(), 1);
        cache.insert(1, 0x2000, frames(0x2000));
        cache.insert(1, 0x3000, frames(0x3000));
        // 0x1000 and 0x2000 are now old; inserting 0x1000 again moves it, not copies it.
        cache.insert(1, 0x1000, frames(0x1000));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn an_address_in_use_survives_aging() {
        let mut cache = FrameCache::new(10);
        cache.insert(1, 0xdead, frames(0xdead));
        for addr in 0..1_000 {
            cache.insert(2, addr, frames(addr));
            // Used once per generation (5 insertions): moved back to the young generation.
            if addr % 4 == 0 {
                assert!(cache.get(1, 0xdead).is_some(), "evicted after {addr} insertions");
            }
        }
    }

    #[test]
    fn forgetting_a_process_drops_all_its_addresses() {
        let mut cache = FrameCache::new(8);
        for addr in 0..6 {
            cache.insert(1, addr, frames(addr));
        }
        cache.insert(2, 0, frames(0));
        cache.forget(1);
        assert_eq!(cache.len(), 1);
        assert!((0..6).all(|addr| cache.get(1, addr).is_none()));
        assert!(cache.get(2, 0).is_some());
        cache.forget(2);
        assert_eq!(cache.len(), 0);
    }
}
