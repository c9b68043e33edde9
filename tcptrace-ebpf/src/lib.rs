#![no_std]
//! Empty library target: lets tcptrace declare this crate as a build dependency so cargo
//! rebuilds when it changes. The programs are in the `tcptrace` binary target.
