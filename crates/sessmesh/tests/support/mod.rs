//! What the embedded peer's tests share.

use std::net::SocketAddr;

use sessmesh_core::{Config, Member, MembershipConfig, Node};

/// A core node named `name` at `addr`, on the default settings and the
/// membership settings for a few members on one machine.
pub(crate) fn core_node(name: &str, addr: SocketAddr, seed: u64) -> Node {
    let config = Config::default();
    let me = Member {
        name: name.into(),
        addr,
        client_addr: None,
        generation: 1,
        partition_count: config.partition_count,
        replication_factor: u32::try_from(config.replication_factor)
            .expect("the default replication factor fits"),
    };
    Node::new(me, &config, MembershipConfig::local(), seed).expect("the default settings are valid")
}
