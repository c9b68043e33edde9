//! The one walk over /proc: which processes hold which socket inodes, through
//! `/proc/<pid>/fd` (the link `socket:[INODE]`), and each process's network namespace.
//!
//! Processes come and go during the walk: one that exits is skipped wherever the walk notices
//! (a race, not an error). procfs reads the descriptors and the name through a descriptor of
//! `/proc/<pid>` opened at the start, so a recycled pid cannot mix two processes' facts.

use std::{collections::HashMap, io};

use anyhow::{Context as _, Result};
use procfs::{
    ProcError,
    process::{FDTarget, Process, all_processes},
};

use super::{FdOwner, netns::Namespaces, vanished, warnings::Warnings};

/// Socket inode → every (pid, fd) holding it.
pub type Owners = HashMap<u64, Vec<FdOwner>>;

/// Walks every process once, adding its network namespace to `namespaces`.
pub fn scan(namespaces: &mut Namespaces, warnings: &mut Warnings) -> Result<Owners> {
    let mut owners = Owners::new();
    let mut held = Vec::new();
    for process in all_processes().context("listing processes in /proc")? {
        let process = match process {
            Ok(process) => process,
            Err(error) => {
                note(error, "reading a process", warnings);
                continue;
            }
        };
        match namespaces.add_process(process.pid) {
            Ok(()) => {}
            Err(error) if vanished(&error) => continue,
            // Its descriptors need the same permission: do not try them one by one.
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                warnings.denied("reading a process's descriptors and network namespace");
                continue;
            }
            Err(error) => warnings.push(format!("/proc/{}/ns/net: {error}", process.pid)),
        }
        held.clear();
        if let Err(error) = sockets_of(&process, &mut held) {
            note(error, "reading a process's descriptors", warnings);
            continue;
        }
        if held.is_empty() {
            continue;
        }
        // Only processes holding sockets pay for reading their name.
        let comm = match process.stat() {
            Ok(stat) => stat.comm,
            Err(error) => {
                note(error, "reading a process's name", warnings);
                continue;
            }
        };
        let Ok(pid) = u32::try_from(process.pid) else {
            continue;
        };
        for &(inode, fd) in &held {
            owners.entry(inode).or_default().push(FdOwner { pid, fd, comm: comm.clone() });
        }
    }
    Ok(owners)
}

/// (inode, fd) of every socket descriptor of `process`.
fn sockets_of(process: &Process, held: &mut Vec<(u64, i32)>) -> Result<(), ProcError> {
    // The iterator skips descriptors closed between the directory read and the readlink.
    for fd in process.fd()? {
        let fd = fd?;
        if let FDTarget::Socket(inode) = fd.target {
            held.push((inode, fd.fd));
        }
    }
    Ok(())
}

/// Skips what vanished, counts permission errors, reports the rest.
fn note(error: ProcError, what: &'static str, warnings: &mut Warnings) {
    match error {
        ProcError::NotFound(_) => {}
        ProcError::PermissionDenied(_) => warnings.denied(what),
        // A process exiting while its files are read can also surface as a failed read.
        ProcError::Io(ref error, _) if vanished(error) => {}
        ProcError::Incomplete(_) => {}
        other => warnings.push(format!("reading /proc: {other}")),
    }
}
