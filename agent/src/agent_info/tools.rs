//! Detects the external tools an agent relies on, and their versions, without side effects.
//!
//! PM2 is the special case: *every* `pm2` command, even `pm2 --version`, starts a daemon in
//! `PM2_HOME` (TOOLCHAIN.md). So its version is read from the `package.json` next to the resolved
//! program instead of running it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostshift_proto::v1::Tool;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::process::{Cmd, SAFE_PATH};

/// Finds `name` in the agent's safe `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    SAFE_PATH
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The folder with `pg_dump`/`pg_restore`/`psql`: the config's, else the newest
/// `/usr/lib/postgresql/<v>/bin`, else wherever `pg_dump` is on `PATH`.
pub fn pg_bin_dir(config: &AgentConfig) -> Option<PathBuf> {
    if let Some(d) = &config.tools.pg_bin_dir {
        return Some(d.clone());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_dump").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .or_else(|| find_in_path("pg_dump").and_then(|p| p.parent().map(Path::to_path_buf)))
}

fn resolve(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        program.is_file().then(|| program.to_path_buf())
    } else {
        find_in_path(&program.to_string_lossy())
    }
}

async fn version_of(name: &str, program: Option<PathBuf>, flag: &str, install: &str) -> Tool {
    let Some(path) = program.clone().and_then(|p| resolve(&p)) else {
        return Tool {
            name: name.into(),
            path: program.map(|p| p.display().to_string()).unwrap_or_default(),
            present: false,
            version: String::new(),
            problem: format!(
                "{name} not found; install it ({install}) or set its path in the agent config"
            ),
        };
    };
    let out = Cmd::new(&path)
        .arg(flag)
        .timeout(Duration::from_secs(10))
        .output(&CancellationToken::new())
        .await;
    let (present, version, problem) = match out {
        Ok(o) if o.exit.success() => {
            // nginx prints its version on stderr.
            let text = if o.stdout.is_empty() {
                o.stderr_tail.clone()
            } else {
                o.stdout_text()
            };
            (
                true,
                text.lines().next().unwrap_or("").trim().to_string(),
                String::new(),
            )
        }
        Ok(o) => (
            false,
            String::new(),
            format!(
                "`{} {flag}` {}: {}",
                path.display(),
                o.exit.describe(),
                o.stderr_tail
            ),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    };
    Tool {
        name: name.into(),
        path: path.display().to_string(),
        present,
        version,
        problem,
    }
}

fn pm2_tool(config: &AgentConfig) -> Tool {
    let program = config
        .pm2
        .as_ref()
        .map_or_else(|| PathBuf::from("pm2"), |p| p.bin.clone());
    let missing = |problem: String| Tool {
        name: "pm2".into(),
        path: program.display().to_string(),
        present: false,
        version: String::new(),
        problem,
    };
    let Some(path) = resolve(&program) else {
        return missing("pm2 not found; install it with `npm install -g pm2`".into());
    };
    let real = std::fs::canonicalize(&path).unwrap_or(path.clone());
    let version = real
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("package.json"))
        .find_map(|pj| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(pj).ok()?).ok()?;
            (v.get("name")?.as_str()? == "pm2")
                .then(|| v.get("version")?.as_str().map(String::from))?
        });
    match version {
        Some(v) => Tool {
            name: "pm2".into(),
            path: path.display().to_string(),
            present: true,
            version: v,
            problem: String::new(),
        },
        None => missing(format!(
            "{} is not an npm-installed pm2 (no pm2 package.json beside it)",
            real.display()
        )),
    }
}

/// All tools, in a fixed order: pg_dump, pg_restore, psql, pm2, nginx.
pub async fn detect(config: &AgentConfig) -> Vec<Tool> {
    let pg = pg_bin_dir(config);
    let pg_install = "apt-get install -y postgresql-client-15";
    let nginx_bin = config
        .nginx
        .as_ref()
        .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), |n| n.bin.clone());
    let (dump, restore, psql, nginx) = tokio::join!(
        version_of(
            "pg_dump",
            pg.as_ref().map(|d| d.join("pg_dump")),
            "--version",
            pg_install
        ),
        version_of(
            "pg_restore",
            pg.as_ref().map(|d| d.join("pg_restore")),
            "--version",
            pg_install
        ),
        version_of(
            "psql",
            pg.as_ref().map(|d| d.join("psql")),
            "--version",
            pg_install
        ),
        version_of("nginx", Some(nginx_bin), "-v", "apt-get install -y nginx"),
    );
    vec![dump, restore, psql, pm2_tool(config), nginx]
}
