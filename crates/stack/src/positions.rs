//! Where each key of a YAML text is: key paths as the validation names them
//! (`services[2].public.paths[0]`) mapped to 1-based line numbers, read
//! from `saphyr-parser` events so semantic errors can name their line.

use saphyr_parser::{Event, Parser};
use std::collections::BTreeMap;

/// Most events read; a config is far below it.
const MAX_EVENTS: usize = 1_000_000;

enum Frame {
    Map { prefix: String, key: Option<String> },
    Seq { prefix: String, index: usize },
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Line of every key and sequence item of the first document, by path.
/// A text that is not YAML gives what was read before the error.
pub fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    let mut started = false;
    for _ in 0..MAX_EVENTS {
        let Some(Ok((ev, span))) = parser.next_event() else {
            break;
        };
        let line = span.start.line();
        let (is_node, opens) = match &ev {
            Event::Scalar(..) | Event::Alias(_) => (true, false),
            Event::SequenceStart(..) | Event::MappingStart(..) => (true, true),
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
                // The collection was a map's value: the map expects a key again.
                if let Some(Frame::Map { key, .. }) = stack.last_mut() {
                    *key = None;
                }
                continue;
            }
            Event::DocumentEnd if started => break,
            _ => continue,
        };
        if !is_node {
            continue;
        }
        started = true;
        // The path of this node, or `None` if it is a mapping key.
        let path = match stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { prefix, index }) => {
                let p = format!("{prefix}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { prefix, key }) => match key.take() {
                None => {
                    if let Event::Scalar(k, ..) = &ev {
                        let p = join(prefix, k);
                        out.entry(p).or_insert(line);
                        *key = Some(k.to_string());
                    }
                    None
                }
                Some(k) => Some(join(prefix, &k)),
            },
        };
        let Some(path) = path else { continue };
        if !path.is_empty() {
            out.entry(path.clone()).or_insert(line);
        }
        if opens {
            stack.push(match ev {
                Event::SequenceStart(..) => Frame::Seq {
                    prefix: path,
                    index: 0,
                },
                _ => Frame::Map {
                    prefix: path,
                    key: None,
                },
            });
        }
    }
    out
}

/// The line of `path`, or of its nearest ancestor that has one
/// (`services[2].public.paths` when the default `paths` was not written).
pub fn line_of(lines: &BTreeMap<String, usize>, path: &str) -> Option<usize> {
    let mut p = path;
    loop {
        if let Some(l) = lines.get(p) {
            return Some(*l);
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keys_and_items_to_lines() {
        let text = "network: demo\nservices:\n  - name: a\n    public:\n      hostname: x.y\n      paths: [/a, /b]\n  - {name: b, tags: [tag:x]}\n";
        let l = key_lines(text);
        assert_eq!(l["network"], 1);
        assert_eq!(l["services"], 2);
        assert_eq!(l["services[0]"], 3);
        assert_eq!(l["services[0].name"], 3);
        assert_eq!(l["services[0].public.hostname"], 5);
        assert_eq!(l["services[0].public.paths[1]"], 6);
        assert_eq!(l["services[1].tags[0]"], 7);
        assert_eq!(line_of(&l, "services[1].private.hostname"), Some(7));
        assert_eq!(line_of(&l, "nothing"), None);
    }

    #[test]
    fn broken_yaml_gives_what_was_read() {
        let l = key_lines("a: 1\nb: [\n");
        assert_eq!(l.get("a"), Some(&1));
    }
}
