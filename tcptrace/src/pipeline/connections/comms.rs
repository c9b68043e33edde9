//! The task names of socket owners, each stored once: a socket keeps a 4-byte id instead of 16
//! bytes, and a process opens its sockets under a handful of names (one per named thread).

use foldhash::HashMap;

use crate::event::Comm;

#[derive(Default)]
pub(super) struct Comms {
    /// By id: the name and how many sockets hold it; a count of 0 is a free id.
    names: Vec<(Comm, u32)>,
    ids: HashMap<Comm, u32>,
    free: Vec<u32>,
}

impl Comms {
    /// The id of `comm`, held once more until `release`.
    pub(super) fn acquire(&mut self, comm: Comm) -> u32 {
        let id = *self.ids.entry(comm).or_insert_with(|| match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = (comm, 0);
                id
            }
            None => {
                self.names.push((comm, 0));
                u32::try_from(self.names.len() - 1).expect("fewer names than sockets")
            }
        });
        self.names[id as usize].1 += 1;
        id
    }

    pub(super) fn get(&self, id: u32) -> Comm {
        self.names[id as usize].0
    }

    /// Forgets the name when its last socket goes, so the table is bounded by the sockets.
    pub(super) fn release(&mut self, id: u32) {
        let (comm, count) = &mut self.names[id as usize];
        *count -= 1;
        if *count == 0 {
            self.ids.remove(comm);
            self.free.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_and_ids_reused_after_the_last_release() {
        let mut comms = Comms::default();
        let (a, b) = (Comm::from("curl"), Comm::from("nginx"));
        let id = comms.acquire(a);
        assert_eq!(comms.acquire(a), id);
        let other = comms.acquire(b);
        assert_ne!(other, id);
        comms.release(id);
        assert_eq!(comms.get(id), a, "still held once");
        comms.release(id);
        assert_eq!(comms.acquire(b), other);
        assert_eq!(comms.acquire(Comm::from("redis")), id, "the free id is reused");
    }
}
