//! The `ssh` and `sshTests` sections, with Tailscale's rules: which targets
//! each side takes, which combinations protect user-owned devices, the
//! local-user syntax and the check period.

use super::{Cx, Result, Side, err, fields, parse_net, strings, valid_user};
use crate::hujson::{Spanned, Value};
use crate::model::Target;
use crate::ssh::{
    CheckPeriod, DEFAULT_CHECK_PERIOD, MAX_CHECK_PERIOD, SshAction, SshRule, SshTest, SshTestDst,
    SshUsers,
};
use std::collections::BTreeMap;
use std::time::Duration;

type Fields<'a> = BTreeMap<&'static str, (String, &'a Spanned)>;

/// A field that is present and not `null` (Tailscale treats `null` as absent).
fn given<'a>(f: &Fields<'a>, name: &str) -> Option<(String, &'a Spanned)> {
    f.get(name)
        .filter(|(_, v)| !matches!(v.value, Value::Null))
        .map(|(p, v)| (p.clone(), *v))
}

/// The trimmed strings of an optional list field (absent: empty).
fn trimmed_list<'a>(f: &Fields<'a>, name: &str) -> Result<Vec<(String, &'a Spanned, String)>> {
    match given(f, name) {
        None => Ok(Vec::new()),
        Some((p, v)) => Ok(strings(v, &p)?
            .into_iter()
            .map(|(ip, item, s)| (ip, item, s.trim().to_string()))
            .collect()),
    }
}

/// Parses a Go duration (`"12h"`, `"1h30m"`, `"1.5h"`, `"-1m"`, `"0"`)
/// into signed nanoseconds, with Go's error wording.
pub(crate) fn go_duration(text: &str) -> std::result::Result<i128, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (neg, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    // Nanoseconds; far beyond Go's range is refused as invalid.
    const LIMIT: i128 = 1 << 100;
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("time: unknown unit {other:?} in duration {text:?}")),
        };
        if int.len() > 30 || frac.len() > 30 {
            return Err(invalid());
        }
        let whole: i128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_not_a_number| invalid())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(invalid)?;
        if !frac.is_empty() {
            let f: i128 = frac.parse().map_err(|_not_a_number| invalid())?;
            let denom = 10i128.checked_pow(frac.len() as u32).ok_or_else(invalid)?;
            part += f.checked_mul(scale).ok_or_else(invalid)? / denom;
        }
        total = total.checked_add(part).ok_or_else(invalid)?;
        if total > LIMIT {
            return Err(invalid());
        }
        rest = after;
    }
    Ok(if neg { -total } else { total })
}

/// Whether `domain` can follow `localpart:*@` or `user:*@`: a lower-case DNS name.
pub(super) fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && !domain.starts_with(['.', '-'])
        && !domain.ends_with(['.', '-'])
        && domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

impl Cx {
    fn ssh_src_target(&self, s: &str, v: &Spanned, path: &str) -> Result<Target> {
        let fail = |m: String| err(v, path, m);
        if s == "*" {
            return Err(fail(
                "\"*\" is not allowed in ssh src: name users, groups, tags, autogroup:member or autogroup:tagged".into(),
            ));
        }
        if s.starts_with("autogroup:") {
            return match s {
                "autogroup:member" => Ok(Target::Member),
                "autogroup:tagged" => Ok(Target::Tagged),
                _ => Err(fail(format!(
                    "{s:?} is not allowed in src; ssh sources take autogroup:member or autogroup:tagged"
                ))),
            };
        }
        if s.starts_with("tag:") {
            self.check_tag(s, v, path)?;
            return Ok(Target::Tag(s.into()));
        }
        if s.starts_with("group:") {
            self.check_group(s, v, path)?;
            return Ok(Target::Group(s.into()));
        }
        if s.starts_with("user:") {
            return self.target(s, v, path, Side::Src);
        }
        if s.contains('@') {
            if !valid_user(s) {
                return Err(fail(format!("invalid user {s:?}: users are name@domain")));
            }
            return Ok(Target::User(s.into()));
        }
        Err(fail(format!(
            "{s:?} is not allowed in ssh src: sources are users, groups, tags, autogroup:member or autogroup:tagged, never addresses or host aliases"
        )))
    }

    fn ssh_dst_target(&self, s: &str, v: &Spanned, path: &str) -> Result<Target> {
        let fail = |m: String| err(v, path, m);
        if s == "*" {
            return Err(fail(
                "\"*\" cannot be an ssh destination; use autogroup:self, tags or autogroup:tagged"
                    .into(),
            ));
        }
        if s.starts_with("autogroup:") {
            return match s {
                "autogroup:self" => Ok(Target::SelfDevices),
                "autogroup:tagged" => Ok(Target::Tagged),
                "autogroup:member" => Err(fail(
                    "autogroup:member cannot be an ssh destination: a user's devices are reached only by that same user, through autogroup:self".into(),
                )),
                _ => Err(fail(format!(
                    "{s:?} is not allowed in ssh dst; use autogroup:self or autogroup:tagged"
                ))),
            };
        }
        if let Some(name) = s.strip_prefix("tag:") {
            if name.contains(':') {
                return Err(fail(format!(
                    "{s:?}: ssh destinations take no port (Tailscale SSH listens on port 22)"
                )));
            }
            self.check_tag(s, v, path)?;
            return Ok(Target::Tag(s.into()));
        }
        if s.starts_with("group:") {
            return Err(fail(format!(
                "{s:?}: groups cannot be ssh destinations; use autogroup:self, or a user with that same user as the only source"
            )));
        }
        if s.contains('@') {
            if !valid_user(s) {
                return Err(fail(format!("invalid user {s:?}: users are name@domain")));
            }
            return Ok(Target::User(s.into()));
        }
        let what = if self.policy.hosts.contains_key(s) {
            "host aliases cannot be ssh destinations"
        } else if matches!(parse_net(s), Ok(Some(_))) {
            "addresses cannot be ssh destinations"
        } else {
            "not a tag, user, autogroup:self or autogroup:tagged"
        };
        Err(fail(format!("invalid dst {s:?}: {what}")))
    }

    fn ssh_users(&self, f: &Fields<'_>, entry: &Spanned, path: &str) -> Result<SshUsers> {
        let list = trimmed_list(f, "users")?;
        if list.is_empty() {
            return Err(match given(f, "users") {
                Some((p, v)) => err(v, &p, "users must be specified"),
                None => err(entry, path, "users must be specified"),
            });
        }
        let mut users = SshUsers::default();
        for (p, item, s) in list {
            if s.is_empty() || s == "*" {
                return Err(err(
                    item,
                    &p,
                    format!(
                        "user {s:?} is not valid; list local users, root, autogroup:nonroot (every user but root) or localpart:*@domain"
                    ),
                ));
            }
            if s == "root" {
                users.root = true;
                continue;
            }
            if s == "autogroup:nonroot" {
                users.nonroot = true;
                continue;
            }
            // `localpart:*@domain` is the only form with a meaning; any
            // other text after `localpart:` is a literal user, as in Tailscale.
            if let Some(domain) = s
                .strip_prefix("localpart:*@")
                .filter(|d| !d.is_empty() && !d.contains('@'))
            {
                if !valid_domain(domain) {
                    return Err(err(
                        item,
                        &p,
                        format!(
                            "{s:?}: the domain after localpart:*@ must be a lower-case DNS name, the domain of your users' logins"
                        ),
                    ));
                }
                if !users.localpart_domains.iter().any(|d| d == domain) {
                    users.localpart_domains.push(domain.to_string());
                }
                continue;
            }
            if !users.names.contains(&s) {
                users.names.push(s);
            }
        }
        Ok(users)
    }

    fn ssh_action(&self, f: &Fields<'_>, entry: &Spanned, path: &str) -> Result<SshAction> {
        let Some((ap, av)) = given(f, "action") else {
            return Err(err(entry, path, "action must be specified"));
        };
        let action = super::as_str(av, &ap)?.trim();
        let check = match action {
            "accept" => false,
            "check" => true,
            "" => return Err(err(av, &ap, "action must be specified")),
            other => {
                return Err(err(
                    av,
                    &ap,
                    format!("{other:?} is not a valid action; use \"accept\" or \"check\""),
                ));
            }
        };
        let period = match given(f, "checkPeriod") {
            None => CheckPeriod::Every(DEFAULT_CHECK_PERIOD),
            Some((pp, pv)) => {
                if !check {
                    return Err(err(
                        pv,
                        &pp,
                        "checkPeriod is only valid with action \"check\"",
                    ));
                }
                let text = super::as_str(pv, &pp)?.trim();
                if text == "always" {
                    CheckPeriod::Always
                } else {
                    let nanos = go_duration(text).map_err(|e| err(pv, &pp, e))?;
                    if nanos < 0 {
                        return Err(err(
                            pv,
                            &pp,
                            format!("checkPeriod {text} must be a positive duration"),
                        ));
                    }
                    if nanos > MAX_CHECK_PERIOD.as_nanos() as i128 {
                        return Err(err(
                            pv,
                            &pp,
                            format!("checkPeriod {text} is above the max (168h)"),
                        ));
                    }
                    let secs = (nanos / 1_000_000_000) as u64;
                    let sub = (nanos % 1_000_000_000) as u32;
                    CheckPeriod::Every(Duration::new(secs, sub))
                }
            }
        };
        Ok(if check {
            SshAction::Check { period }
        } else {
            SshAction::Accept
        })
    }

    pub(super) fn ssh_rule(&self, entry: &Spanned, i: usize) -> Result<SshRule> {
        let path = format!("ssh[{i}]");
        let f = fields(
            entry,
            &path,
            &[
                ("action", &[]),
                ("src", &[]),
                ("dst", &[]),
                ("users", &[]),
                ("checkPeriod", &[]),
                ("acceptEnv", &[]),
            ],
        )?;
        let action = self.ssh_action(&f, entry, &path)?;
        // Tailscale accepts an empty or missing src or dst: the rule then
        // selects nothing.
        let src = trimmed_list(&f, "src")?
            .iter()
            .map(|(p, item, s)| self.ssh_src_target(s, item, p))
            .collect::<Result<Vec<_>>>()?;
        let mut dst = Vec::new();
        for (p, item, s) in trimmed_list(&f, "dst")? {
            let t = self.ssh_dst_target(&s, item, &p)?;
            match &t {
                Target::SelfDevices => self.check_self_sources(&src, false, entry, &path)?,
                Target::User(u) => {
                    if let Some(bad) = src.iter().find(|s| **s != t) {
                        return Err(err(
                            item,
                            &p,
                            format!(
                                "users in dst are only allowed from the same user: {u:?} needs {u:?} as the only source, not {:?}; use autogroup:self for each user's own devices",
                                bad.to_string()
                            ),
                        ));
                    }
                }
                _ => {}
            }
            dst.push(t);
        }
        let users = self.ssh_users(&f, entry, &path)?;
        let mut accept_env = Vec::new();
        if let Some((ep, ev)) = given(&f, "acceptEnv") {
            for (p, item, s) in strings(ev, &ep)? {
                if s.is_empty() {
                    return Err(err(item, &p, "acceptEnv values cannot be empty"));
                }
                accept_env.push(s.to_string());
            }
        }
        Ok(SshRule {
            index: i,
            pos: entry.pos,
            action,
            src,
            dst,
            users,
            accept_env,
        })
    }

    fn ssh_test_dst(&self, s: &str, v: &Spanned, path: &str) -> Result<Target> {
        match s {
            "autogroup:self" => return Ok(Target::SelfDevices),
            "autogroup:member" => return Ok(Target::Member),
            "autogroup:tagged" => return Ok(Target::Tagged),
            "*" => {
                return Err(err(
                    v,
                    path,
                    "SSH tests dst cannot be \"*\"; name the devices",
                ));
            }
            _ => {}
        }
        if s.starts_with("autogroup:") {
            return Err(err(
                v,
                path,
                format!("SSH tests dst contains disallowed element {s:?}"),
            ));
        }
        if s.strip_prefix("tag:").is_some_and(|n| n.contains(':')) {
            return Err(err(
                v,
                path,
                format!("{s:?}: SSH tests destinations take no port"),
            ));
        }
        self.target(s, v, path, Side::TestSrc)
    }

    pub(super) fn ssh_test(&self, entry: &Spanned, i: usize) -> Result<SshTest> {
        let path = format!("sshTests[{i}]");
        let f = fields(
            entry,
            &path,
            &[
                ("src", &[]),
                ("dst", &[]),
                ("accept", &[]),
                ("deny", &[]),
                ("check", &[]),
            ],
        )?;
        let Some((sp, sv)) = given(&f, "src") else {
            return Err(err(
                entry,
                &path,
                "SSH tests entry must have a non-empty src",
            ));
        };
        let src_text = super::as_str(sv, &sp)?.trim();
        if src_text.is_empty() {
            return Err(err(sv, &sp, "SSH tests entry must have a non-empty src"));
        }
        let src = self.target(src_text, sv, &sp, Side::TestSrc)?;
        let mut dst = Vec::new();
        for (p, item, s) in trimmed_list(&f, "dst")? {
            let target = self.ssh_test_dst(&s, item, &p)?;
            dst.push(SshTestDst {
                text: s,
                pos: item.pos,
                target,
            });
        }
        if dst.is_empty() {
            return Err(match given(&f, "dst") {
                Some((p, v)) => err(v, &p, "SSH tests entry must have at least one dst"),
                None => err(entry, &path, "SSH tests entry must have at least one dst"),
            });
        }
        let mut lists: [Vec<String>; 3] = Default::default();
        for (k, name) in ["accept", "deny", "check"].iter().enumerate() {
            for (p, item, s) in trimmed_list(&f, name)? {
                if s.is_empty() {
                    return Err(err(item, &p, "an empty login is not valid"));
                }
                lists[k].push(s);
            }
        }
        let [accept, deny, check] = lists;
        if accept.is_empty() && deny.is_empty() && check.is_empty() {
            return Err(err(
                entry,
                &path,
                "an SSH test needs at least one accept, deny or check login",
            ));
        }
        Ok(SshTest {
            index: i,
            pos: entry.pos,
            src,
            dst,
            accept,
            deny,
            check,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;

    #[test]
    fn go_durations() {
        const S: i128 = 1_000_000_000;
        for (text, want) in [
            ("0", 0),
            ("12h", 12 * 3600 * S),
            ("1h30m", 5400 * S),
            ("1.5h", 5400 * S),
            ("30s", 30 * S),
            ("0s", 0),
            ("-1m", -60 * S),
            ("+2m", 120 * S),
            ("168h0m1s", (168 * 3600 + 1) * S),
            ("1500ms", 1_500_000_000),
            ("2us", 2_000),
            ("2\u{b5}s", 2_000),
            (".5s", 500_000_000),
            ("5.s", 5 * S),
        ] {
            assert_eq!(go_duration(text), Ok(want), "{text}");
        }
        for (text, want) in [
            ("abc", "time: invalid duration \"abc\""),
            ("", "time: invalid duration \"\""),
            ("-", "time: invalid duration \"-\""),
            ("1", "time: missing unit in duration \"1\""),
            ("1x", "time: unknown unit \"x\" in duration \"1x\""),
            ("1d", "time: unknown unit \"d\" in duration \"1d\""),
            (".s", "time: invalid duration \".s\""),
            ("1h 2m", "time: unknown unit \"h \" in duration \"1h 2m\""),
            (
                "99999999999999999999999999999999h",
                "time: invalid duration \"99999999999999999999999999999999h\"",
            ),
        ] {
            assert_eq!(go_duration(text).unwrap_err(), want, "{text}");
        }
    }
}
