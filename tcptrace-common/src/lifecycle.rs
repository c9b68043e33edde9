//! Which TCP state changes the kernel reports, decided before the socket is read.
//!
//! `inet_sock_set_state` fires for every change of every TCP socket on the host, most of them
//! of no interest (other processes, or states an aggregating reader does not use), so the
//! decision is made from the states and the owner map alone, cheapest test first.

use crate::tcp_state::{CLOSE, CLOSE_WAIT, LISTEN, SYN_SENT};

/// What `triage` decided for one state change. Payload-free, so it compiles to an integer:
/// LLVM leaves the absent payload of an enum variant in an undefined register, which the BPF
/// verifier rejects (`R0 !read_ok`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Triage {
    /// Not reported.
    Skip,
    /// connect() (`CLOSE -> SYN_SENT`) or listen() (`CLOSE -> LISTEN`), made in the caller's
    /// thread: reported if the caller passes the process filter, and the caller is the owner.
    Open,
    /// Reported; the owner map knows who opened the socket.
    Owned,
    /// Reported; nobody known opened the socket (opened before tracing started, or a listener
    /// child not accepted yet). Never with a process filter.
    Unowned,
}

/// Whether the change `old -> new` can be reported at all, from its states alone: `triage`'s
/// first tests. The state-change programs ask it before touching any map (their nesting marks
/// included, so both decide alike), and most changes of a churning host end there in lean mode:
/// of the ten changes of a loopback connection, four are none of an open, a close, a peer's
/// close or a connect's outcome.
#[inline(always)]
pub const fn may_report(old: u8, new: u8, lean: bool) -> bool {
    old != new && (is_open(old, new) || !lean || lifecycle_change(old, new))
}

/// connect() (`CLOSE -> SYN_SENT`) or listen() (`CLOSE -> LISTEN`).
#[inline(always)]
const fn is_open(old: u8, new: u8) -> bool {
    old == CLOSE && (new == SYN_SENT || new == LISTEN)
}

/// Whether the change `old -> new` of socket is reported.
///
/// `lean`: `Settings::lean` (only the changes `lifecycle_change` keeps). `filters_process`:
/// `Filter::filters_process` (changes of sockets without a known owner are dropped, since their
/// process cannot be told). `owner_known` looks the socket up in the owner map; it is called
/// only once the states alone have not decided, because that lookup is most of the cost of a
/// change nobody wants.
#[inline(always)]
pub fn triage(
    old: u8,
    new: u8,
    lean: bool,
    filters_process: bool,
    owner_known: impl FnOnce() -> bool,
) -> Triage {
    // tcp_close_state() "moves" FIN_WAIT2, LAST_ACK, ... to the state they are in: no change.
    if !may_report(old, new, lean) {
        return Triage::Skip;
    }
    if is_open(old, new) {
        return Triage::Open;
    }
    if owner_known() {
        Triage::Owned
    } else if filters_process {
        Triage::Skip
    } else {
        Triage::Unowned
    }
}

/// The changes (other than opens) that lean mode sends: the protocol close (lifetime, TIME_WAIT
/// entry, a dead descriptor), the peer's close (CLOSE_WAIT), and a connect()'s outcome (its
/// local port, its latency). The rest follow a close() or shutdown() of the owner's, or a
/// listener child's handshake that accept() reports; the inventory sweeps show the states of
/// sockets still held.
#[inline(always)]
pub const fn lifecycle_change(old: u8, new: u8) -> bool {
    new == CLOSE || new == CLOSE_WAIT || old == SYN_SENT
}

impl Triage {
    /// Whether user space already has this socket's endpoints, so they need not be read: in
    /// lean mode, a socket with an owner was reported with them by its connect(), listen() or
    /// accept(), except the local port of a connect(), assigned after `CLOSE -> SYN_SENT` and
    /// first read when it leaves SYN_SENT.
    #[inline(always)]
    pub fn addresses_known(self, old: u8, lean: bool) -> bool {
        lean && self == Self::Owned && old != SYN_SENT
    }
}

#[cfg(test)]
mod tests {
    use core::cell::Cell;

    use super::*;
    use crate::tcp_state::*;

    const STATES: [u8; 12] = [
        ESTABLISHED,
        SYN_SENT,
        SYN_RECV,
        FIN_WAIT1,
        FIN_WAIT2,
        TIME_WAIT,
        CLOSE,
        CLOSE_WAIT,
        LAST_ACK,
        LISTEN,
        CLOSING,
        NEW_SYN_RECV,
    ];

    fn pairs() -> impl Iterator<Item = (u8, u8)> {
        STATES.iter().flat_map(|&old| STATES.iter().map(move |&new| (old, new)))
    }

    /// The changes lean mode keeps, spelt out the way the design names them rather than
    /// computed the way `lifecycle_change` computes them.
    fn lean_keeps(old: u8, new: u8) -> bool {
        let protocol_close = new == CLOSE;
        let peer_closed = new == CLOSE_WAIT;
        let connect_outcome = old == SYN_SENT;
        protocol_close || peer_closed || connect_outcome
    }

    /// Every (old, new) pair, both modes, with and without a process filter and an owner: the
    /// decision, and whether the owner lookup ran.
    #[test]
    fn triage_decides_every_pair_in_both_modes() {
        for (old, new) in pairs() {
            for lean in [false, true] {
                for filters_process in [false, true] {
                    for owned in [false, true] {
                        let lookups = Cell::new(0);
                        let got = triage(old, new, lean, filters_process, || {
                            lookups.set(lookups.get() + 1);
                            owned
                        });
                        let open = old == CLOSE && matches!(new, SYN_SENT | LISTEN);
                        let decided_by_states =
                            old == new || open || (lean && !lean_keeps(old, new));
                        let want = if old == new {
                            Triage::Skip
                        } else if open {
                            Triage::Open
                        } else if lean && !lean_keeps(old, new) {
                            Triage::Skip
                        } else if owned {
                            Triage::Owned
                        } else if filters_process {
                            Triage::Skip
                        } else {
                            Triage::Unowned
                        };
                        let case = format!(
                            "{old}->{new} lean={lean} filters_process={filters_process} owned={owned}"
                        );
                        assert_eq!(got, want, "{case}");
                        let want_lookups = if decided_by_states { 0 } else { 1 };
                        assert_eq!(lookups.get(), want_lookups, "owner lookups, {case}");
                    }
                }
            }
        }
    }

    #[test]
    fn full_mode_reports_every_real_change_of_an_owned_socket() {
        for (old, new) in pairs() {
            let got = triage(old, new, false, false, || true);
            assert_eq!(got == Triage::Skip, old == new, "{old}->{new}");
        }
    }

    /// The exact set lean mode sends for an owned socket, as a list: a change to the rule shows
    /// up as a diff here.
    #[test]
    fn lean_mode_sends_opens_closes_close_wait_and_connect_outcomes_only() {
        let mut sent: Vec<(u8, u8)> =
            pairs().filter(|&(o, n)| triage(o, n, true, false, || true) != Triage::Skip).collect();
        sent.sort_unstable();
        let mut want = vec![(CLOSE, SYN_SENT), (CLOSE, LISTEN)];
        for old in STATES {
            if old != CLOSE {
                want.push((old, CLOSE));
            }
            if old != CLOSE_WAIT {
                want.push((old, CLOSE_WAIT));
            }
        }
        for new in STATES {
            if new != SYN_SENT && new != CLOSE && new != CLOSE_WAIT {
                want.push((SYN_SENT, new));
            }
        }
        want.sort_unstable();
        want.dedup();
        assert_eq!(sent, want);
        assert_eq!(sent.len(), 2 + 11 + 11 + 9);
    }

    #[test]
    fn lifecycle_change_matches_the_spelt_out_rule_for_every_pair() {
        for (old, new) in pairs() {
            assert_eq!(lifecycle_change(old, new), lean_keeps(old, new), "{old}->{new}");
        }
    }

    #[test]
    fn addresses_are_known_only_for_owned_sockets_in_lean_mode_past_syn_sent() {
        for (old, new) in pairs() {
            for lean in [false, true] {
                for filters_process in [false, true] {
                    for owned in [false, true] {
                        let t = triage(old, new, lean, filters_process, || owned);
                        let want = lean && t == Triage::Owned && old != SYN_SENT;
                        assert_eq!(
                            t.addresses_known(old, lean),
                            want,
                            "{old}->{new} lean={lean} filters_process={filters_process} owned={owned}"
                        );
                    }
                }
            }
        }
        // The cases that matter, by name: a connect()'s outcome reads the local port it got.
        assert!(!Triage::Owned.addresses_known(SYN_SENT, true));
        assert!(Triage::Owned.addresses_known(ESTABLISHED, true));
        assert!(!Triage::Owned.addresses_known(ESTABLISHED, false));
        assert!(!Triage::Unowned.addresses_known(ESTABLISHED, true));
        assert!(!Triage::Open.addresses_known(CLOSE, true));
    }

    /// `may_report` is `triage`'s verdict wherever the states alone decide: a change it rules
    /// out is skipped by triage whatever the owner map says, and one it lets through is
    /// skipped by triage only for want of an owner.
    #[test]
    fn may_report_agrees_with_triage_on_every_state_pair() {
        for old in 0..=13u8 {
            for new in 0..=13u8 {
                for lean in [false, true] {
                    let known = triage(old, new, lean, true, || true);
                    assert_eq!(
                        may_report(old, new, lean),
                        known != Triage::Skip,
                        "{old} -> {new}, lean {lean}"
                    );
                }
            }
        }
        // Lean mode leaves out the changes that follow the owner's own close() or a handshake.
        for (old, new) in [
            (ESTABLISHED, FIN_WAIT1),
            (FIN_WAIT1, FIN_WAIT2),
            (CLOSE_WAIT, LAST_ACK),
            (SYN_RECV, ESTABLISHED),
        ] {
            assert!(!may_report(old, new, true) && may_report(old, new, false));
        }
    }
}
