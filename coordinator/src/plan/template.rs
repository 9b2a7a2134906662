//! The plan template `hostshift plan init` writes: every key, commented. A unit test parses it
//! so it always matches the plan types.

/// The template text.
pub const TEMPLATE: &str = include_str!("template.toml");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, SwitchMethod};
    use hostshift_shared::tomlpos::Located;

    #[test]
    fn template_parses_and_validates_once_certificates_exist() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("certs")).expect("mkdir");
        for f in ["ca.crt", "coordinator.crt", "coordinator.key"] {
            let p = tmp.path().join("certs").join(f);
            std::fs::write(&p, "x").expect("write");
            // As `certs init` writes them: a key readable by others is refused.
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
        }
        let path = tmp.path().join("plan.toml");
        let plan = Plan::from_located(&Located::from_source(&path, TEMPLATE.into()))
            .unwrap_or_else(|e| panic!("template invalid:\n{e}"));
        assert_eq!(plan.switch.method, SwitchMethod::None);
        assert_eq!(plan.databases[0].name, "app");
        assert_eq!(
            plan.files[0].overrides["CORS_ORIGIN"],
            "https://app.example.com"
        );
    }

    /// docs/plan.md sets every key; the real types must read and write exactly those.
    #[test]
    fn docs_reference_covers_every_key() {
        let md = include_str!("../../../docs/plan.md");
        hostshift_shared::tomlpos::check_reference_block::<Plan>(md)
            .unwrap_or_else(|e| panic!("docs/plan.md is out of date: {e}"));
    }

    #[test]
    fn template_without_certificates_names_the_missing_files() {
        let path = std::path::Path::new("/nonexistent-dir/plan.toml");
        let err = Plan::from_located(&Located::from_source(path, TEMPLATE.into()))
            .expect_err("certs missing");
        let text = err.to_string();
        assert!(
            text.contains("key `tls.ca`") && text.contains("hostshift certs init"),
            "{text}"
        );
    }

    #[test]
    fn broken_plan_names_line_and_key() {
        let src = TEMPLATE.replace("method = \"none\"", "method = \"carrier-pigeon\"");
        let path = std::path::Path::new("/x/plan.toml");
        let err =
            Plan::from_located(&Located::from_source(path, src.clone())).expect_err("bad method");
        let line = src
            .lines()
            .position(|l| l.contains("carrier-pigeon"))
            .expect("line")
            + 1;
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("/x/plan.toml:{line}: key `method`")),
            "{text}"
        );
    }
}
