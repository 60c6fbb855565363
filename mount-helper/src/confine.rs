//! The one place the container's confinement is applied, in one fixed
//! order, after the mounts and pivot_root and before the command's exec:
//!
//! 0. init made not dumpable, always (even `--privileged`): it runs the
//!    launcher's binary from the host, and /proc/1/exe would hand the
//!    container that file (runc's CVE-2019-5736), /proc/1/fd its fds;
//! 1. masked and read-only paths (`masks`), while mounting is still allowed;
//! 2. no_new_privs, when asked for;
//! 3. the seccomp programs (`seccomp`), loaded while the process still has
//!    CAP_SYS_ADMIN, so no_new_privs is not forced on set-uid programs
//!    (as runc does when no_new_privs is not asked for);
//! 4. the capability sets (`capabilities`), last, since dropping
//!    CAP_SETPCAP / CAP_SYS_ADMIN ends the right to do any of the above.
//!
//! Device nodes are confined before this, outside: the launcher puts init
//! in cgroups holding docker's allow-list (`cgroup::devices`: the v1
//! `devices` files and a BPF device program in the unified hierarchy), and
//! `rootfs` mounts the root and /dev `nodev`.
//!
//! Invariant: a `Plan` is built (and can fail) in the launcher before any
//! container process exists; `apply` only issues `Syscall`s, so the whole
//! sequence is recorded and checked by the unit test in `process`.
//! Takes no locks.

use seccompiler::BpfProgram;

use crate::capabilities::{self, Capability};
use crate::seccomp::{self, SeccompError};
use crate::spec::Security;
use crate::sys::{SysResult, Syscall};

/// What `apply` will do, computed from the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Mask and make read-only the /proc and /sys paths.
    pub masks: bool,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// seccomp programs to load, in order (none: unconfined).
    pub seccomp: Vec<BpfProgram>,
    /// The capabilities to keep (`None`: keep all, `--privileged`).
    pub caps: Option<Vec<Capability>>,
}

impl Plan {
    /// The plan for `sec`; fails only if the seccomp filter cannot be built.
    pub fn new(sec: &Security) -> Result<Plan, SeccompError> {
        Ok(Plan {
            masks: sec.masks(),
            no_new_privs: sec.no_new_privs,
            seccomp: if sec.seccomp {
                seccomp::programs(&sec.caps)?
            } else {
                Vec::new()
            },
            caps: (!sec.privileged).then(|| sec.caps.clone()),
        })
    }
}

/// Applies `plan` to the calling process (the container's init, whose
/// children inherit it).
pub fn apply(sys: &dyn Syscall, plan: &Plan) -> SysResult<()> {
    sys.set_not_dumpable()?;
    if plan.masks {
        crate::masks::apply(sys)?;
    }
    if plan.no_new_privs {
        sys.set_no_new_privs()?;
    }
    for p in &plan.seccomp {
        sys.load_seccomp(p)?;
    }
    if let Some(keep) = &plan.caps {
        capabilities::apply(sys, keep)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_security;
    use crate::sys::{Call, Recorder};

    fn plan(privileged: bool, opts: &[&str]) -> Plan {
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        let sec =
            parse_security(privileged, &[], &[], &opts).unwrap_or_else(|e| unreachable!("{e}"));
        Plan::new(&sec).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn default_plan_is_dockers() {
        let p = plan(false, &[]);
        assert!(p.masks && !p.no_new_privs);
        assert_eq!(p.seccomp.len(), 2);
        assert_eq!(
            p.caps.as_deref(),
            Some(&capabilities::sorted(capabilities::DEFAULT)[..])
        );
    }

    #[test]
    fn privileged_plan_only_hides_init() {
        let p = plan(true, &[]);
        assert_eq!(p, Plan::default());
        let r = Recorder::default();
        apply(&r, &p).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(r.calls.into_inner(), vec![Call::NotDumpable]);
    }

    #[test]
    fn order_is_masks_nnp_seccomp_caps() {
        let p = plan(false, &["no-new-privileges"]);
        let r = Recorder::default();
        apply(&r, &p).unwrap_or_else(|e| unreachable!("{e}"));
        let calls = r.calls.into_inner();
        let pos = |f: &dyn Fn(&Call) -> bool| calls.iter().position(f);
        assert_eq!(calls.first(), Some(&Call::NotDumpable));
        let last_mount = calls.iter().rposition(|c| matches!(c, Call::Mount(..)));
        let nnp = pos(&|c| *c == Call::NoNewPrivs);
        let seccomp = pos(&|c| matches!(c, Call::Seccomp(_)));
        let caps = pos(&|c| matches!(c, Call::DropBounding(_)));
        assert!(last_mount.is_some() && nnp.is_some() && seccomp.is_some() && caps.is_some());
        assert!(
            last_mount < nnp && nnp < seccomp && seccomp < caps,
            "{calls:?}"
        );
        assert_eq!(calls.last(), Some(&Call::ClearAmbient));
        let unconfined = plan(false, &["seccomp=unconfined"]);
        assert!(unconfined.seccomp.is_empty() && unconfined.caps.is_some());
    }
}
