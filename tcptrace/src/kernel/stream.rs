//! The ring buffer as an async source: wait until readable, drain everything, then clear the
//! readiness (aya's ring_buf tests do the same). The kernel wakes the reader only once a
//! quarter of the ring is full (`Settings::wakeup_bytes`), so the reader also drains every
//! `POLL_EVERY` whatever it was told: events arrive within that, at a wakeup per batch rather
//! than per event.

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// How long events may wait in the ring buffer for the reader.
const POLL_EVERY: Duration = Duration::from_millis(20);

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

    /// Waits for records (at most `POLL_EVERY`), then hands every available one to `each`;
    /// returns how many (none, when the wait ended with nothing).
    pub async fn next_batch(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<usize> {
        match tokio::time::timeout(POLL_EVERY, self.ring.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard?;
                let n = drain(guard.get_inner_mut(), &mut each);
                guard.clear_ready();
                Ok(n)
            }
            Err(_) => Ok(drain(self.ring.get_mut(), &mut each)),
        }
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
