//! Reading Linux's `/proc` about one process: is it alive, its parent, its title, its
//! children. One place for the format's traps (a command name may hold `") "`; a zombie or dead
//! process still has a `/proc` entry and must count as gone) instead of a copy in each caller.

use std::fs;

/// The fields of `/proc/<pid>/stat` callers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `D`, `Z`, `X`, …).
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
}

impl Stat {
    /// `None` once the process is gone (or its entry cannot be read or parsed).
    pub fn read(pid: u32) -> Option<Self> {
        parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// A zombie or a dead task: it runs no more, only its entry waits to be reaped.
    pub fn dead(self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of a `stat` file.
fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is parenthesised and may itself contain ") ": split at the last one.
    let (_, rest) = text.rsplit_once(") ")?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid })
}

/// True while `pid` is a live process: gone, a zombie or dead counts as not alive.
pub fn alive(pid: u32) -> bool {
    Stat::read(pid).is_some_and(|s| !s.dead())
}

/// The process's title: its argv joined by spaces (programs like nginx rewrite it, e.g.
/// "nginx: worker process"); `None` when gone or empty (a kernel thread, a zombie).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The live children of `pid`, from each of its threads' `children` file (cheap; needs a kernel
/// with `CONFIG_PROC_CHILDREN`, which every distribution kernel has).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|p| alive(*p))
        .collect()
}

/// Every process whose parent is `parent`, by scanning `/proc` (works where `children` files do
/// not exist; includes zombies, which callers reap or wait for).
pub fn children_by_scan(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| Stat::read(pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_a_parenthesis_and_space_parses_from_the_last_one() {
        let s = parse_stat("42 (evil) S 7 (x) R 1 2 3").expect("parse");
        assert_eq!(
            s,
            Stat {
                state: 'R',
                ppid: 1
            }
        );
        let z = parse_stat("43 (sh) Z 9 43 43").expect("parse");
        assert!(z.dead() && z.ppid == 9);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_with_a_title_and_a_parent() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(cmdline(me).is_some());
        let parent = Stat::read(me).expect("own stat").ppid;
        assert!(children_by_scan(parent).contains(&me));
        assert!(!alive(u32::MAX), "no such pid");
    }
}
