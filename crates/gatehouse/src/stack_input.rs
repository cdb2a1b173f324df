//! Loading `gatehouse.yaml` (or the built-in demo) and its policy.

use anyhow::{Context, Result, anyhow};
use gatehouse_policy::{Policy, parse_policy};
use gatehouse_stack::{DEMO_POLICY, StackConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded stack: its config and its policy.
#[derive(Debug, Clone)]
pub struct Stack {
    pub config: StackConfig,
    pub policy: Arc<Policy>,
}

/// Loads a config file, or the built-in demo when `path` is `None`.
pub fn load_stack(path: Option<&Path>) -> Result<Stack> {
    let (config, base) = match path {
        None => (StackConfig::demo(), std::env::current_dir()?),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let cfg = StackConfig::parse(&text)
                .map_err(|e| anyhow!("{}", e.located(&p.display().to_string())))?;
            let base = p
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (cfg, base)
        }
    };
    let policy_text = match (&config.policy, path) {
        (Some(file), Some(_)) => {
            let f = base.join(file);
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
        }
        _ => DEMO_POLICY.to_string(),
    };
    let policy = Arc::new(parse_policy(&policy_text).context("policy")?);
    Ok(Stack { config, policy })
}
