//! What the firewall asks of the kernel, behind one trait: nftables transactions and
//! queries, the host firewall (iptables), the `route_localnet` sysctl and conntrack. The
//! transaction (`apply`, `remove`, `check`) and the maintenance (`reload`, `repair`, holds,
//! GC) reach the kernel only through it, so they run over a fake in unit tests; invariant:
//! [`Netlink`] is a thin forwarder, every decision stays with the callers.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io;

use super::error::FirewallError;
use super::hostfw::{self, Families};
use super::nft::{self, NftError};
use super::plan::{KeyVal, Op, Table};
use super::{conntrack, sysctl};

pub(crate) trait Kernel: Debug + Send + Sync {
    /// Runs `ops` as one nftables transaction (all or nothing).
    fn run(&self, ops: &[Op]) -> Result<(), NftError>;
    /// Does plugnet's table `t` exist?
    fn table_exists(&self, t: Table) -> io::Result<bool>;
    /// Does set/map `name` exist in plugnet's table?
    fn set_exists(&self, name: &str) -> io::Result<bool>;
    /// Does chain `name` exist in plugnet's table?
    fn chain_exists(&self, name: &str) -> io::Result<bool>;
    /// Does element `key` exist in set/map `set`?
    fn elem_exists(&self, set: &str, key: &[KeyVal]) -> io::Result<bool>;
    /// Does chain `name` hold exactly the rules `want`?
    fn chain_holds(&self, name: &str, want: &[Op]) -> io::Result<bool>;
    /// The host firewall keeps `bridges` open ([`hostfw::sync`]).
    fn host_sync(&self, bridges: &BTreeSet<String>, carried: Families)
        -> Result<(), FirewallError>;
    /// The same, every rule rewritten ([`hostfw::sync_exact`]).
    fn host_sync_exact(
        &self,
        bridges: &BTreeSet<String>,
        carried: Families,
    ) -> Result<(), FirewallError>;
    /// Are the host firewall's rules for `bridges` in place ([`hostfw::in_place`])?
    fn host_in_place(&self, bridges: &[String]) -> Result<bool, FirewallError>;
    /// CHECK of the host firewall's rules for `bridge` ([`hostfw::check`]).
    fn host_check(&self, bridge: &str) -> Result<(), FirewallError>;
    /// `net.ipv4.conf.<bridge>.route_localnet`.
    fn route_localnet(&self, bridge: &str) -> Result<String, FirewallError>;
    /// Sets it, returning the previous value.
    fn set_route_localnet(&self, bridge: &str, value: &str) -> Result<String, FirewallError>;
    /// Deletes the UDP conntrack entries of `ports`; how many.
    fn flush_udp_ports(&self, ports: &[u16]) -> io::Result<usize>;
}

/// The real kernel: nf_tables over netlink, iptables, /proc/sys, ctnetlink.
#[derive(Debug, Default)]
pub(crate) struct Netlink;

impl Kernel for Netlink {
    fn run(&self, ops: &[Op]) -> Result<(), NftError> {
        nft::run(ops)
    }
    fn table_exists(&self, t: Table) -> io::Result<bool> {
        nft::table_exists(t)
    }
    fn set_exists(&self, name: &str) -> io::Result<bool> {
        nft::set_exists(name)
    }
    fn chain_exists(&self, name: &str) -> io::Result<bool> {
        nft::chain_exists(name)
    }
    fn elem_exists(&self, set: &str, key: &[KeyVal]) -> io::Result<bool> {
        nft::elem_exists(set, key)
    }
    fn chain_holds(&self, name: &str, want: &[Op]) -> io::Result<bool> {
        nft::chain_holds(name, want)
    }
    fn host_sync(
        &self,
        bridges: &BTreeSet<String>,
        carried: Families,
    ) -> Result<(), FirewallError> {
        hostfw::sync(bridges, carried)
    }
    fn host_sync_exact(
        &self,
        bridges: &BTreeSet<String>,
        carried: Families,
    ) -> Result<(), FirewallError> {
        hostfw::sync_exact(bridges, carried)
    }
    fn host_in_place(&self, bridges: &[String]) -> Result<bool, FirewallError> {
        hostfw::in_place(bridges)
    }
    fn host_check(&self, bridge: &str) -> Result<(), FirewallError> {
        hostfw::check(bridge)
    }
    fn route_localnet(&self, bridge: &str) -> Result<String, FirewallError> {
        sysctl::read_route_localnet(bridge)
    }
    fn set_route_localnet(&self, bridge: &str, value: &str) -> Result<String, FirewallError> {
        sysctl::set_route_localnet(bridge, value)
    }
    fn flush_udp_ports(&self, ports: &[u16]) -> io::Result<usize> {
        conntrack::flush_udp_ports(ports)
    }
}
