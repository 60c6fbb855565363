//! The device allow-list of a container: docker's default list, on the
//! cgroup v1 `devices` controller and, in the unified (v2) hierarchy, as a
//! BPF_CGROUP_DEVICE program (v2 has no devices files; the kernel asks an
//! attached program instead, as runc and crun do).
//!
//! Invariant: both are in place before any process joins the cgroup — the
//! v1 list written "deny all" first, the program attached to a cgroup that
//! is still empty — so no process of the container ever sees a wider list.
//! The program is built from the same `ALLOW` rules with rbpf's
//! instruction builder and is checked in rbpf's interpreter by the unit
//! tests. Takes no locks.

use std::os::fd::AsFd;
use std::path::Path;

use rbpf::insn_builder::{Arch, BpfCode, Cond, Instruction, IntoBytes, MemSize, Source};

use super::{write, CgroupError};

/// docker's default rules: any node may be made (`m`), and only these may
/// be read or written: null, zero, full, random, urandom, tty, console,
/// ptmx, the pts, and tun.
pub const ALLOW: [&str; 12] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// Writes the allow-list into the v1 devices cgroup `dir`.
pub fn limit_v1(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join("devices.deny"), "a")?;
    for rule in ALLOW {
        write(&dir.join("devices.allow"), rule)?;
    }
    Ok(())
}

/// `m`, `r`, `w` as the kernel's BPF_DEVCG_ACC_* bits.
pub const ACC_MKNOD: u32 = 1;
/// Read access.
pub const ACC_READ: u32 = 2;
/// Write access.
pub const ACC_WRITE: u32 = 4;
/// BPF_DEVCG_DEV_BLOCK.
pub const DEV_BLOCK: u32 = 1;
/// BPF_DEVCG_DEV_CHAR.
pub const DEV_CHAR: u32 = 2;

/// One rule of the list: `None` is a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// DEV_BLOCK or DEV_CHAR (`a` is `None`).
    pub kind: Option<u32>,
    /// Major number.
    pub major: Option<u32>,
    /// Minor number.
    pub minor: Option<u32>,
    /// ACC_* bits allowed.
    pub access: u32,
}

/// Parses a `devices.allow` line (`c 1:3 rwm`, `b *:* m`, `a`).
pub fn parse_rule(line: &str) -> Option<Rule> {
    let mut it = line.split_whitespace();
    let kind = match it.next()? {
        "a" => {
            return Some(Rule {
                kind: None,
                major: None,
                minor: None,
                access: 7,
            })
        }
        "b" => Some(DEV_BLOCK),
        "c" => Some(DEV_CHAR),
        _ => return None,
    };
    let (maj, min) = it.next()?.split_once(':')?;
    let num = |x: &str| -> Option<Option<u32>> {
        if x == "*" {
            Some(None)
        } else {
            x.parse().ok().map(Some)
        }
    };
    let mut access = 0;
    for c in it.next()?.chars() {
        access |= match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => return None,
        };
    }
    Some(Rule {
        kind,
        major: num(maj)?,
        minor: num(min)?,
        access,
    })
}

/// The BPF_PROG_TYPE_CGROUP_DEVICE program allowing exactly `rules`
/// (everything else gets 0: EPERM). Its context is
/// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
/// access_type being `access << 16 | type`.
pub fn program(rules: &[Rule]) -> Vec<u8> {
    let mut p = BpfCode::new();
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    p.load_x(MemSize::Word)
        .set_dst(2)
        .set_src(1)
        .set_off(0)
        .push();
    p.bit_and(Source::Imm, Arch::X32)
        .set_dst(2)
        .set_imm(0xffff)
        .push();
    p.load_x(MemSize::Word)
        .set_dst(3)
        .set_src(1)
        .set_off(0)
        .push();
    p.right_shift(Source::Imm, Arch::X32)
        .set_dst(3)
        .set_imm(16)
        .push();
    p.load_x(MemSize::Word)
        .set_dst(4)
        .set_src(1)
        .set_off(4)
        .push();
    p.load_x(MemSize::Word)
        .set_dst(5)
        .set_src(1)
        .set_off(8)
        .push();
    for r in rules {
        // Each check jumps past the rest of this rule's block when it fails.
        let checks = usize::from(r.kind.is_some())
            + if r.access & 7 == 7 { 0 } else { 3 }
            + usize::from(r.major.is_some())
            + usize::from(r.minor.is_some());
        let block = checks + 2; // + "r0 = 1; exit"
        let mut at = 0usize;
        let skip = |at: &mut usize, len: usize| -> i16 {
            *at += len;
            i16::try_from(block - *at).unwrap_or(i16::MAX)
        };
        if let Some(k) = r.kind {
            let off = skip(&mut at, 1);
            p.jump_conditional(Cond::NotEquals, Source::Imm)
                .set_dst(2)
                .set_imm(k as i32)
                .set_off(off)
                .push();
        }
        if r.access & 7 != 7 {
            // Asked-for access bits outside the rule's: no match.
            let off = skip(&mut at, 3);
            p.mov(Source::Reg, Arch::X32).set_dst(6).set_src(3).push();
            p.bit_and(Source::Imm, Arch::X32)
                .set_dst(6)
                .set_imm((!r.access & 7) as i32)
                .push();
            p.jump_conditional(Cond::NotEquals, Source::Imm)
                .set_dst(6)
                .set_imm(0)
                .set_off(off)
                .push();
        }
        for (reg, v) in [(4u8, r.major), (5u8, r.minor)] {
            if let Some(v) = v {
                let off = skip(&mut at, 1);
                p.jump_conditional(Cond::NotEquals, Source::Imm)
                    .set_dst(reg)
                    .set_imm(v as i32)
                    .set_off(off)
                    .push();
            }
        }
        p.mov(Source::Imm, Arch::X32).set_dst(0).set_imm(1).push();
        p.exit().push();
    }
    p.mov(Source::Imm, Arch::X32).set_dst(0).set_imm(0).push();
    p.exit().push();
    p.into_bytes().to_vec()
}

/// The default list as rules.
pub fn rules() -> Vec<Rule> {
    ALLOW.iter().filter_map(|l| parse_rule(l)).collect()
}

/// Attaches the allow-list program to the v2 cgroup `dir`.
pub fn attach_v2(dir: &Path) -> Result<(), CgroupError> {
    let err = |what: &str, e: nix::errno::Errno| CgroupError {
        path: dir.display().to_string(),
        err: std::io::Error::other(format!("{what}: {e}")),
    };
    let prog = crate::sys::bpf_load_device_program(&program(&rules()))
        .map_err(|e| err("cannot load the device program (BPF_PROG_LOAD)", e))?;
    let cg = std::fs::File::open(dir).map_err(|e| CgroupError {
        path: dir.display().to_string(),
        err: e,
    })?;
    crate::sys::bpf_attach_device_program(cg.as_fd(), prog.as_fd())
        .map_err(|e| err("cannot attach the device program (BPF_PROG_ATTACH)", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(prog: &[u8], kind: u32, major: u32, minor: u32, access: u32) -> u64 {
        let vm = rbpf::EbpfVmRaw::new(Some(prog)).unwrap_or_else(|e| unreachable!("{e}"));
        let mut ctx = Vec::new();
        ctx.extend_from_slice(&(access << 16 | kind).to_le_bytes());
        ctx.extend_from_slice(&major.to_le_bytes());
        ctx.extend_from_slice(&minor.to_le_bytes());
        vm.execute_program(&mut ctx)
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn rules_parse() {
        assert_eq!(
            parse_rule("c 136:* rwm"),
            Some(Rule {
                kind: Some(DEV_CHAR),
                major: Some(136),
                minor: None,
                access: 7
            })
        );
        assert_eq!(
            parse_rule("b *:* m"),
            Some(Rule {
                kind: Some(DEV_BLOCK),
                major: None,
                minor: None,
                access: ACC_MKNOD
            })
        );
        for bad in ["x 1:3 rwm", "c 1-3 rwm", "c 1:3 rwx", "c 1:3", "c a:3 r"] {
            assert_eq!(parse_rule(bad), None, "{bad}");
        }
        assert_eq!(rules().len(), ALLOW.len());
    }

    #[test]
    fn the_program_allows_exactly_the_list() {
        let p = program(&rules());
        let rw = ACC_READ | ACC_WRITE;
        // The allowed character devices, read and written.
        for (maj, min) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (136, 0),
            (136, 7),
            (10, 200),
        ] {
            assert_eq!(ask(&p, DEV_CHAR, maj, min, rw), 1, "c {maj}:{min}");
        }
        // Any node may be made, none other opened.
        assert_eq!(ask(&p, DEV_BLOCK, 254, 0, ACC_MKNOD), 1);
        assert_eq!(ask(&p, DEV_CHAR, 10, 229, ACC_MKNOD), 1);
        assert_eq!(ask(&p, DEV_BLOCK, 254, 0, ACC_READ), 0, "the host's disk");
        assert_eq!(ask(&p, DEV_BLOCK, 7, 0, ACC_WRITE), 0);
        assert_eq!(ask(&p, DEV_CHAR, 10, 229, rw), 0, "/dev/fuse");
        assert_eq!(ask(&p, DEV_CHAR, 1, 1, ACC_READ), 0, "/dev/mem");
        assert_eq!(ask(&p, DEV_CHAR, 1, 11, ACC_READ), 0, "/dev/kmsg");
        assert_eq!(
            ask(&p, DEV_BLOCK, 1, 3, ACC_READ),
            0,
            "block 1:3 is not null"
        );
        // A rule's access bits bound the request.
        let only_r = program(&[Rule {
            kind: Some(DEV_CHAR),
            major: Some(1),
            minor: Some(3),
            access: ACC_READ,
        }]);
        assert_eq!(ask(&only_r, DEV_CHAR, 1, 3, ACC_READ), 1);
        assert_eq!(ask(&only_r, DEV_CHAR, 1, 3, rw), 0);
        assert_eq!(
            ask(&program(&[]), DEV_CHAR, 1, 3, ACC_READ),
            0,
            "empty list: nothing"
        );
        assert_eq!(
            ask(
                &program(&[parse_rule("a").unwrap_or_else(|| unreachable!())]),
                DEV_BLOCK,
                8,
                0,
                rw
            ),
            1
        );
    }

    #[test]
    fn deny_all_then_allow_the_list() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        limit_v1(t.path()).unwrap_or_else(|e| unreachable!("{e}"));
        // A plain file keeps the last write: the last rule of the list.
        assert_eq!(
            std::fs::read_to_string(t.path().join("devices.deny")).unwrap_or_default(),
            "a"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("devices.allow")).unwrap_or_default(),
            "c 10:200 rwm"
        );
        // No block device is readable or writable: only `m` for blocks.
        assert!(ALLOW
            .iter()
            .filter(|r| r.starts_with('b'))
            .all(|r| *r == "b *:* m"));
    }
}
