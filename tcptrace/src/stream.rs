//! The ring buffer as an async source: wait until readable, drain everything, then clear the
//! readiness (aya's ring_buf tests do the same).

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its descriptor and lives inside the AsyncFd, so the
        // descriptor stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { ring })
    }

    /// Waits for records, then hands every available one to `each`; returns how many.
    pub async fn next_batch(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let n = drain(guard.get_inner_mut(), &mut each);
        guard.clear_ready();
        Ok(n)
    }

    /// Hands every record already in the ring to `each` without waiting (used at shutdown).
    pub fn drain_now(&mut self, mut each: impl FnMut(&[u8])) -> usize {
        drain(self.ring.get_mut(), &mut each)
    }
}

fn drain(ring: &mut RingBuf<MapData>, each: &mut impl FnMut(&[u8])) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        each(&item);
        n += 1;
    }
    n
}
