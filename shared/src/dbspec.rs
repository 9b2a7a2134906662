//! The SQL that recreates a database as `pg_dump --create` would: `CREATE DATABASE` with the old
//! one's owner, encoding and locale, and its `ALTER DATABASE … SET` settings. One builder for
//! the agent that runs it and the coordinator's `check`, which prints it when the new host's
//! role may not create databases.

use hostshift_proto::v1::DatabaseSpec;

/// `name` as a double-quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `v` as a single-quoted SQL literal (standard_conforming_strings).
pub fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// `CREATE DATABASE` for `name` from `spec`; with `owner` false the `OWNER` clause is left out
/// (the role does not exist yet: it comes with the sync's roles, and the owner is set then).
pub fn create_sql(name: &str, spec: &DatabaseSpec, owner: bool) -> String {
    let mut sql = format!("CREATE DATABASE {} TEMPLATE template0", ident(name));
    if owner && !spec.owner.is_empty() {
        sql.push_str(&format!(" OWNER {}", ident(&spec.owner)));
    }
    if !spec.encoding.is_empty() {
        sql.push_str(&format!(" ENCODING {}", literal(&spec.encoding)));
    }
    if spec.locale_provider == "i" {
        sql.push_str(" LOCALE_PROVIDER icu");
        if !spec.icu_locale.is_empty() {
            sql.push_str(&format!(" ICU_LOCALE {}", literal(&spec.icu_locale)));
        }
    }
    if !spec.collate.is_empty() {
        sql.push_str(&format!(" LC_COLLATE {}", literal(&spec.collate)));
    }
    if !spec.ctype.is_empty() {
        sql.push_str(&format!(" LC_CTYPE {}", literal(&spec.ctype)));
    }
    sql
}

/// Settings whose value is a list PostgreSQL stores with its elements quoted as identifiers
/// (PostgreSQL's `GUC_LIST_QUOTE`): pg_dump splits them into one literal per element.
const LIST_SETTINGS: &[&str] = &[
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// The elements of a stored list setting (`"$user", public` → `$user`, `public`).
fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = v.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        item.push('"');
                    } else {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            while chars.peek().is_some_and(|&c| c != ',') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_string();
        }
        out.push(item);
        if chars.next().is_none() {
            break;
        }
    }
    out
}

/// `ALTER DATABASE name SET …` for one stored setting (`"work_mem=8MB"`); `None` for a malformed
/// one.
pub fn set_sql(name: &str, setting: &str) -> Option<String> {
    let (key, value) = setting.split_once('=')?;
    if key.is_empty() {
        return None;
    }
    let value = if LIST_SETTINGS.contains(&key.to_ascii_lowercase().as_str()) {
        split_list(value)
            .iter()
            .map(|v| literal(v))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        literal(value)
    };
    Some(format!(
        "ALTER DATABASE {} SET {} TO {value}",
        ident(name),
        ident(key)
    ))
}

/// The spec in a few words: `owner app, encoding UTF8, collation C.UTF-8, 1 setting`.
pub fn summary(spec: &DatabaseSpec) -> String {
    let mut s = format!(
        "owner {}, encoding {}, collation {}",
        spec.owner, spec.encoding, spec.collate
    );
    if spec.ctype != spec.collate {
        s.push_str(&format!(", ctype {}", spec.ctype));
    }
    if spec.locale_provider == "i" {
        s.push_str(&format!(", ICU locale {}", spec.icu_locale));
    }
    if !spec.settings.is_empty() {
        s.push_str(&format!(", settings {}", spec.settings.join(" ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DatabaseSpec {
        DatabaseSpec {
            owner: "app".into(),
            encoding: "UTF8".into(),
            collate: "C".into(),
            ctype: "C".into(),
            locale_provider: "c".into(),
            icu_locale: String::new(),
            settings: vec!["work_mem=8MB".into()],
        }
    }

    #[test]
    fn create_names_owner_encoding_and_locale() {
        assert_eq!(
            create_sql("learn\"ly", &spec(), true),
            "CREATE DATABASE \"learn\"\"ly\" TEMPLATE template0 OWNER \"app\" ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
        );
        assert!(!create_sql("x", &spec(), false).contains("OWNER"));
    }

    #[test]
    fn settings_quote_values_and_split_lists() {
        assert_eq!(
            set_sql("x", "work_mem=8MB").as_deref(),
            Some("ALTER DATABASE \"x\" SET \"work_mem\" TO '8MB'")
        );
        assert_eq!(
            set_sql("x", "search_path=\"$user\", public, \"a,b\"").as_deref(),
            Some("ALTER DATABASE \"x\" SET \"search_path\" TO '$user', 'public', 'a,b'")
        );
        assert_eq!(
            set_sql("x", "statement_timeout=it's").as_deref(),
            Some("ALTER DATABASE \"x\" SET \"statement_timeout\" TO 'it''s'")
        );
        assert_eq!(set_sql("x", "nothing"), None);
    }
}
