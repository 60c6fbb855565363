//! The namespaces a container gets, in their fixed order.
//!
//! Invariant: the pid namespace is entered by the launcher before it forks
//! the container's init (a pid namespace applies to children); every other
//! namespace is unshared by init itself, after it joined its cgroup, so the
//! cgroup namespace is rooted at the container's cgroup. Takes no locks.

use nix::sched::CloneFlags;

use crate::spec::Net;

/// Namespaces the container's init unshares, in one call.
pub fn init_namespaces(net: Net) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if net == Net::None {
        f |= CloneFlags::CLONE_NEWNET;
    }
    f
}

/// The namespace the launcher enters before forking init.
pub fn launcher_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWPID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_none_adds_a_network_namespace() {
        assert!(init_namespaces(Net::None).contains(CloneFlags::CLONE_NEWNET));
        assert!(!init_namespaces(Net::Host).contains(CloneFlags::CLONE_NEWNET));
        for n in [Net::None, Net::Host] {
            let f = init_namespaces(n);
            assert!(f.contains(
                CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWCGROUP
            ));
            assert!(
                !f.contains(CloneFlags::CLONE_NEWPID),
                "pid ns is the launcher's"
            );
        }
    }
}
