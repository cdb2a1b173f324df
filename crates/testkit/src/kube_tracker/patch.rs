//! The patch formats: RFC 7386 merge patch and RFC 6902 JSON patch.

use serde_json::{Value, json};

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_parent<'a>(doc: &'a mut Value, path: &str) -> Option<(&'a mut Value, String)> {
    let (parent, last) = path.rsplit_once('/')?;
    let last = last.replace("~1", "/").replace("~0", "~");
    Some((doc.pointer_mut(parent)?, last))
}

/// RFC 6902 JSON patch (add, remove, replace, test).
pub(super) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("patch is not an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str() {
            Some("test") => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("remove") => {
                let (p, last) = pointer_parent(doc, path).ok_or("bad path")?;
                match p {
                    Value::Object(m) => {
                        m.remove(&last);
                    }
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                    _ => return Err("bad target".into()),
                }
            }
            Some(o @ ("add" | "replace")) => {
                let v = op["value"].clone();
                let (p, last) = pointer_parent(doc, path).ok_or("bad path")?;
                match p {
                    Value::Object(m) => {
                        m.insert(last, v);
                    }
                    Value::Array(a) if last == "-" => a.push(v),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if o == "add" && i <= a.len() {
                            a.insert(i, v);
                        } else if i < a.len() {
                            a[i] = v;
                        } else {
                            return Err("index out of range".into());
                        }
                    }
                    Value::Null => {
                        *p = json!({ last: v });
                    }
                    _ => return Err("bad target".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}
