//! What kind of binaries an image holds: the ELF machine of its command
//! (or /bin/sh), Windows PE executables, and whether the host can run them
//! (same machine, or a binfmt_misc handler registered for them).
//!
//! Invariant: reads only; paths inside the image are resolved with
//! `openat2(RESOLVE_IN_ROOT)` so an image's symlinks cannot reach host files.
//! Takes no locks.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

/// What the first bytes of an executable say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binary {
    /// ELF with this e_machine; the header bytes for binfmt matching.
    Elf(u16, Vec<u8>),
    /// A Windows PE executable.
    Pe,
    /// Something else (a script, data).
    Other,
}

/// Classifies the start of a file.
pub fn classify(head: &[u8]) -> Binary {
    if head.len() >= 20 && head.starts_with(b"\x7fELF") {
        let m = if head[5] == 2 {
            u16::from_be_bytes([head[18], head[19]])
        } else {
            u16::from_le_bytes([head[18], head[19]])
        };
        Binary::Elf(m, head.to_vec())
    } else if head.starts_with(b"MZ") {
        Binary::Pe
    } else {
        Binary::Other
    }
}

/// A readable name for an ELF machine.
pub fn machine_name(m: u16) -> String {
    match m {
        3 => "i386".into(),
        8 => "mips".into(),
        20 => "ppc".into(),
        21 => "ppc64".into(),
        22 => "s390x".into(),
        40 => "arm".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "riscv64".into(),
        258 => "loongarch64".into(),
        o => format!("machine {o}"),
    }
}

/// The host's ELF machine.
pub fn host_machine() -> u16 {
    match std::env::consts::ARCH {
        "x86" => 3,
        "arm" => 40,
        "aarch64" => 183,
        "powerpc64" => 21,
        "s390x" => 22,
        "riscv64" => 243,
        "loongarch64" => 258,
        _ => 62,
    }
}

/// One binfmt_misc entry: does it handle a file starting with `head`?
pub fn binfmt_matches(entry: &str, head: &[u8]) -> bool {
    let mut enabled = false;
    let mut offset = 0usize;
    let mut magic = Vec::new();
    let mut mask = Vec::new();
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len() / 2)
            .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
            .collect()
    };
    for line in entry.lines() {
        let line = line.trim();
        if line == "enabled" {
            enabled = true;
        } else if let Some(v) = line.strip_prefix("offset ") {
            offset = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("magic ") {
            magic = hex(v.trim());
        } else if let Some(v) = line.strip_prefix("mask ") {
            mask = hex(v.trim());
        }
    }
    if !enabled || magic.is_empty() {
        return false;
    }
    magic.iter().enumerate().all(|(i, m)| {
        let b = head.get(offset + i).copied().unwrap_or(0);
        let k = mask.get(i).copied().unwrap_or(0xff);
        b & k == m & k
    })
}

/// Whether any registered binfmt_misc handler runs a file starting with `head`.
pub fn binfmt_handles(dir: &Path, head: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let n = e.file_name();
        n != "register"
            && n != "status"
            && std::fs::read_to_string(e.path()).is_ok_and(|t| binfmt_matches(&t, head))
    })
}

fn open_in_root(root: &OwnedFd, path: &Path) -> Option<std::fs::File> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = path.strip_prefix("/").unwrap_or(path);
    nix::fcntl::openat2(root.as_fd(), rel, how)
        .ok()
        .map(std::fs::File::from)
}

/// The head of the command `argv0` as found in the image at `root` (via
/// `path` dirs when it has no slash), else of the image's /bin/sh.
pub fn command_head(root: &Path, argv0: &str, path: &[&str]) -> Option<Vec<u8>> {
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let mut candidates: Vec<PathBuf> = if argv0.contains('/') {
        vec![PathBuf::from(argv0)]
    } else {
        path.iter().map(|d| Path::new(d).join(argv0)).collect()
    };
    candidates.push(PathBuf::from("/bin/sh"));
    for c in candidates {
        if let Some(mut f) = open_in_root(&rootfd, &c) {
            let mut head = vec![0u8; 64];
            let n = f.read(&mut head).unwrap_or(0);
            head.truncate(n);
            if !matches!(classify(&head), Binary::Other) {
                return Some(head);
            }
        }
    }
    None
}

/// Checks that the host can run the image's binaries; the error is one
/// line for the user.
pub fn check_runnable(
    root: &Path,
    argv0: &str,
    path: &[&str],
    binfmt_dir: &Path,
) -> Result<(), String> {
    let Some(head) = command_head(root, argv0, path) else {
        return Ok(());
    };
    match classify(&head) {
        Binary::Pe => Err("the image holds Windows (PE) executables: it needs a Windows kernel and cannot run on Linux".into()),
        Binary::Elf(m, _) if m == host_machine() => Ok(()),
        Binary::Elf(m, _) if binfmt_handles(binfmt_dir, &head) => {
            let _ = m;
            Ok(())
        }
        Binary::Elf(m, _) => Err(format!(
            "the image is for {} but this host is {}, and no binfmt_misc handler is registered for {} binaries; \
             enable emulation with: apt-get install qemu-user-static binfmt-support (and mount binfmt_misc at /proc/sys/fs/binfmt_misc)",
            machine_name(m),
            machine_name(host_machine()),
            machine_name(m)
        )),
        Binary::Other => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16) -> Vec<u8> {
        let mut h = vec![
            0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0,
        ];
        h.extend_from_slice(&machine.to_le_bytes());
        h.resize(64, 0);
        h
    }

    #[test]
    fn classifies_elf_pe_and_scripts() {
        assert!(matches!(classify(&elf(183)), Binary::Elf(183, _)));
        assert_eq!(classify(b"MZ\x90\0"), Binary::Pe);
        assert_eq!(classify(b"#!/bin/sh\n"), Binary::Other);
        assert_eq!(machine_name(183), "aarch64");
    }

    #[test]
    fn binfmt_entry_matching() {
        // The qemu-aarch64 entry as qemu-user-static registers it.
        let entry = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\n\
                     magic 7f454c460201010000000000000000000200b700\n\
                     mask ffffffffffffff00fffffffffffffffffeffffff\n";
        assert!(binfmt_matches(entry, &elf(183)));
        assert!(!binfmt_matches(entry, &elf(62)));
        assert!(!binfmt_matches(
            &entry.replace("enabled", "disabled"),
            &elf(183)
        ));
    }

    #[test]
    fn foreign_image_without_handler_names_both_architectures() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::create_dir_all(t.path().join("bin")).unwrap_or_else(|e| unreachable!("{e}"));
        let foreign = if host_machine() == 183 { 62 } else { 183 };
        std::fs::write(t.path().join("bin/sh"), elf(foreign))
            .unwrap_or_else(|e| unreachable!("{e}"));
        let none = t.path().join("no-binfmt");
        let e = check_runnable(t.path(), "true", &["/bin"], &none)
            .err()
            .unwrap_or_default();
        assert!(
            e.contains(&machine_name(foreign)) && e.contains(&machine_name(host_machine())),
            "{e}"
        );
        assert!(e.contains("qemu-user-static"), "{e}");
        std::fs::write(t.path().join("bin/sh"), b"MZ\x90\0rest")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let e = check_runnable(t.path(), "true", &["/bin"], &none)
            .err()
            .unwrap_or_default();
        assert!(e.contains("Windows"), "{e}");
        std::fs::write(t.path().join("bin/sh"), elf(host_machine()))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(check_runnable(t.path(), "true", &["/bin"], &none), Ok(()));
    }
}
