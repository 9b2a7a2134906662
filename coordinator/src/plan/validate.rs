//! Checks on a parsed plan that serde cannot make; each problem carries its file, line and key.

use std::collections::HashSet;

use hostshift_shared::identity::valid_name;
use hostshift_shared::model::TablePattern;
use hostshift_shared::tomlpos::{Located, Problem};

use super::{FreezeMethod, Host, Plan, SwitchMethod};

pub(super) fn validate(plan: &Plan, src: &Located) -> Vec<Problem> {
    let mut out = Vec::new();
    rehearsal(plan, src, &mut out);
    if !valid_name(&plan.migration.name) {
        out.push(src.problem(
            "migration.name",
            "a short name: 1-63 letters, digits, '-', '_' or '.'",
        ));
    }
    host(src, "old", &plan.old, &mut out);
    host(src, "new", &plan.new, &mut out);
    if plan.old.address == plan.new.address {
        out.push(src.problem("new.address", "old and new are the same agent address"));
    }
    if plan.old.agent == plan.new.agent {
        out.push(src.problem("new.agent", "old and new name the same agent certificate"));
    }
    for (key, p) in [
        ("tls.ca", &plan.tls.ca),
        ("tls.cert", &plan.tls.cert),
        ("tls.key", &plan.tls.key),
    ] {
        let resolved = plan.resolve(p);
        if !resolved.is_file() {
            out.push(src.problem(
                key,
                format!(
                    "{} does not exist (create it with `hostshift certs init`)",
                    resolved.display()
                ),
            ));
        } else if key == "tls.key"
            && let Err(e) = hostshift_shared::tls::check_key_mode(&resolved)
        {
            out.push(src.problem(key, e.to_string()));
        }
    }
    unique(
        src,
        "databases",
        plan.databases.iter().map(|d| d.name.as_str()),
        &mut out,
    );
    for (i, d) in plan.databases.iter().enumerate() {
        for (list, what) in [(&d.include, "include"), (&d.exclude, "exclude")] {
            for (j, pat) in list.iter().enumerate() {
                // The agents' rule, from the same parser: a plan that passes here is never
                // refused by an agent for its patterns.
                if let Err(e) = TablePattern::parse(pat) {
                    out.push(src.problem(&format!("databases.{i}.{what}.{j}"), e.to_string()));
                }
            }
        }
    }
    unique(
        src,
        "storage",
        plan.storage.iter().map(|s| s.name.as_str()),
        &mut out,
    );
    unique(
        src,
        "files",
        plan.files.iter().map(|f| f.name.as_str()),
        &mut out,
    );
    for (i, f) in plan.files.iter().enumerate() {
        for (k, v) in &f.overrides {
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                out.push(src.problem(
                    &format!("files.{i}.overrides"),
                    format!("{k:?} is not a .env key (letters, digits, '_')"),
                ));
            } else if let Err(e) =
                hostshift_shared::dotenv::edit("", &[(k.clone(), Some(v.clone()))])
            {
                // The same check the new agent makes when it applies the override (a line break
                // would add a line of its own to the .env).
                out.push(src.problem(&format!("files.{i}.overrides"), e.to_string()));
            }
        }
    }
    for (i, a) in plan.pm2.apps.iter().enumerate() {
        if a.trim().is_empty() {
            out.push(src.problem(&format!("pm2.apps.{i}"), "empty app name"));
        }
    }
    let mut seen = HashSet::new();
    for (i, h) in plan.health.iter().enumerate() {
        let key = format!("health.{i}");
        if !valid_name(&h.name) {
            out.push(src.problem(
                &format!("{key}.name"),
                "1-63 letters, digits, '-', '_' or '.'",
            ));
        } else if !seen.insert(h.name.as_str()) {
            out.push(src.problem(
                &format!("{key}.name"),
                format!("{:?} is used twice", h.name),
            ));
        }
        match h.url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => out.push(src.problem(
                &format!("{key}.url"),
                format!("{:?} is not an http(s) URL", h.url),
            )),
        }
        if !(100..=599).contains(&h.expect_status) {
            out.push(src.problem(&format!("{key}.expect_status"), "an HTTP status, 100-599"));
        }
        if h.timeout_secs == 0 {
            out.push(src.problem(&format!("{key}.timeout_secs"), "must be at least 1"));
        }
        if h.retries == 0 {
            out.push(src.problem(
                &format!("{key}.retries"),
                "must be at least 1 (the number of attempts)",
            ));
        }
        if let Some(f) = &h.json_field
            && !f.contains('=')
        {
            out.push(src.problem(
                &format!("{key}.json_field"),
                "use path=value, e.g. \"status=ok\"",
            ));
        }
    }
    freeze(plan, src, &mut out);
    switch(plan, src, &mut out);
    out
}

fn host(src: &Located, side: &str, h: &Host, out: &mut Vec<Problem>) {
    match h.address.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() && u.port().is_some() => {}
        Ok(u) if u.scheme_str() == Some("http") => out.push(src.problem(
            &format!("{side}.address"),
            "agents speak mutual TLS only: use https://HOST:PORT",
        )),
        _ => out.push(src.problem(
            &format!("{side}.address"),
            format!(
                "{:?}: want https://HOST:PORT, e.g. https://10.0.0.5:7443",
                h.address
            ),
        )),
    }
    if !valid_name(&h.agent) {
        out.push(src.problem(
            &format!("{side}.agent"),
            "the agent name given to `hostshift certs init --agent NAME=...`",
        ));
    }
}

fn unique<'a>(
    src: &Located,
    table: &str,
    names: impl Iterator<Item = &'a str>,
    out: &mut Vec<Problem>,
) {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        let key = format!("{table}.{i}.name");
        if !valid_name(n) {
            out.push(src.problem(
                &key,
                "the name the agents' configs give it: 1-63 letters, digits, '-', '_' or '.'",
            ));
        } else if !seen.insert(n) {
            out.push(src.problem(&key, format!("{n:?} is listed twice")));
        }
    }
}

/// `[rehearsal]` may name only what the plan moves, and scratch names must be valid names.
fn rehearsal(plan: &Plan, src: &Located, out: &mut Vec<Problem>) {
    let r = &plan.rehearsal;
    let kinds: [(&str, &std::collections::BTreeMap<String, String>, Vec<&str>); 3] = [
        (
            "databases",
            &r.databases,
            plan.databases.iter().map(|d| d.name.as_str()).collect(),
        ),
        (
            "storage",
            &r.storage,
            plan.storage.iter().map(|s| s.name.as_str()).collect(),
        ),
        (
            "files",
            &r.files,
            plan.files.iter().map(|f| f.name.as_str()).collect(),
        ),
    ];
    for (kind, map, names) in kinds {
        for (from, to) in map {
            let key = format!("rehearsal.{kind}.{from}");
            if !names.contains(&from.as_str()) {
                out.push(src.problem(&key, format!("{from:?} is not in the plan's [[{kind}]]")));
            } else if !valid_name(to) || to == from {
                out.push(src.problem(
                    &key,
                    "a scratch name the new agent's config declares, not the real one: 1-63 letters, digits, '-', '_' or '.'",
                ));
            }
        }
    }
}

fn freeze(plan: &Plan, src: &Located, out: &mut Vec<Problem>) {
    if plan.freeze.budget_secs == 0 {
        out.push(src.problem("freeze.budget_secs", "must be at least 1"));
    }
    let mut seen = HashSet::new();
    for m in &plan.freeze.methods {
        if !seen.insert(*m) {
            out.push(src.problem("freeze.methods", format!("{m:?} is listed twice")));
        }
        match m {
            FreezeMethod::MaintenancePage if !plan.nginx.enabled => out.push(src.problem(
                "freeze.methods",
                "maintenance-page needs nginx: set `enabled = true` in [nginx] or drop the method",
            )),
            FreezeMethod::StopApps if plan.pm2.apps.is_empty() => out.push(src.problem(
                "freeze.methods",
                "stop-apps needs apps: list them in [pm2] apps or drop the method",
            )),
            FreezeMethod::ReadOnly if plan.databases.is_empty() => out.push(src.problem(
                "freeze.methods",
                "read-only needs [[databases]] or drop the method",
            )),
            _ => {}
        }
    }
}

fn switch(plan: &Plan, src: &Located, out: &mut Vec<Problem>) {
    let s = &plan.switch;
    let need_aws = !matches!(s.method, SwitchMethod::None);
    if need_aws && s.aws.is_none() {
        out.push(src.problem(
            "switch",
            "this method calls AWS: add [switch.aws] with `region`",
        ));
    }
    match s.method {
        SwitchMethod::ElasticIp => {
            if s.elastic_ip.is_none() {
                out.push(src.problem(
                    "switch",
                    "method elastic-ip needs [switch.elastic_ip] with `allocation_id`",
                ));
            }
            instance_ids(plan, src, "elastic-ip", out);
        }
        SwitchMethod::Dns => {
            if s.dns.is_none() {
                out.push(src.problem(
                    "switch",
                    "method dns needs [switch.dns] with `zone_id` and `record`",
                ));
            }
            for (side, h) in [("old", &plan.old), ("new", &plan.new)] {
                match &h.ip {
                    Some(ip) if ip.parse::<std::net::IpAddr>().is_ok() => {}
                    Some(ip) => out.push(src.problem(
                        &format!("{side}.ip"),
                        format!("{ip:?} is not an IP address"),
                    )),
                    None => out.push(
                        src.problem(side, format!("method dns needs `ip` of the {side} host")),
                    ),
                }
            }
        }
        SwitchMethod::LoadBalancer => {
            if s.load_balancer.is_none() {
                out.push(src.problem(
                    "switch",
                    "method load-balancer needs [switch.load_balancer] with `target_group_arn`",
                ));
            }
            instance_ids(plan, src, "load-balancer", out);
        }
        SwitchMethod::None => {}
    }
    for (i, u) in s.verify_urls.iter().enumerate() {
        if !matches!(
            u.parse::<http::Uri>()
                .ok()
                .and_then(|u| u.scheme_str().map(String::from))
                .as_deref(),
            Some("http" | "https")
        ) {
            out.push(src.problem(
                &format!("switch.verify_urls.{i}"),
                format!("{u:?} is not an http(s) URL"),
            ));
        }
    }
}

fn instance_ids(plan: &Plan, src: &Located, method: &str, out: &mut Vec<Problem>) {
    for (side, h) in [("old", &plan.old), ("new", &plan.new)] {
        if !h
            .instance_id
            .as_deref()
            .is_some_and(|i| i.starts_with("i-"))
        {
            out.push(src.problem(
                side,
                format!("method {method} needs `instance_id = \"i-...\"` of the {side} host"),
            ));
        }
    }
}
