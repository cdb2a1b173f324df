//! The audit log's writer: every change, registration, token grant and
//! refusal, with bounded fields (some come from unauthenticated requests).

use crate::App;
use gatehouse_proto::control::AuditEntry;

/// Longest actor and target an audit entry keeps, in bytes.
pub(crate) const AUDIT_NAME_MAX: usize = 256;
/// Longest detail an audit entry keeps, in bytes.
pub(crate) const AUDIT_DETAIL_MAX: usize = 4096;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const MARK: &str = "…(truncated)";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

/// Writes an audit entry (failures to write are logged, not fatal). Every
/// field is bounded, since some come from unauthenticated requests.
pub(crate) async fn audit(
    app: &App,
    actor: &str,
    action: &str,
    target: &str,
    ok: bool,
    detail: &str,
) {
    let e = AuditEntry {
        id: 0,
        at: app.now(),
        actor: bounded(actor, AUDIT_NAME_MAX),
        action: bounded(action, AUDIT_NAME_MAX),
        target: bounded(target, AUDIT_NAME_MAX),
        outcome: if ok { "ok" } else { "refused" }.into(),
        detail: bounded(detail, AUDIT_DETAIL_MAX),
    };
    if let Err(err) = app.store.audit(&e).await {
        tracing::error!(error = %err, action, "cannot write audit entry");
    }
}
