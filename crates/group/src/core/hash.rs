//! The configuration hash that marks which spec an instance was made from.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// SHA-256 (hex) of the canonical JSON of `{"Flavor": flavor, "Instance": instance}`: object keys
/// sorted, no whitespace. Canonicalised here rather than trusting `serde_json::to_string`, whose key
/// order depends on whether any crate in the build enables serde_json's `preserve_order` feature; a
/// hash that changed with an unrelated dependency would roll every group.
pub fn config_hash(instance: &Value, flavor: &Value) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"Flavor\":");
    write_canonical(flavor, &mut out);
    out.push_str(",\"Instance\":");
    write_canonical(instance, &mut out);
    out.push('}');
    hex::encode(Sha256::digest(out.as_bytes()))
}

/// Writes `v` with sorted keys and no whitespace.
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(child) = map.get(k) {
                    write_canonical(child, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        // Scalars have one rendering in serde_json already.
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&Value::String(s.to_string()).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value = serde_json::from_str(
            r#"{"Plugin": "x", "Properties": {"b": 1, "a": [1, {"z": 2, "y": 3}]}}"#,
        )
        .expect("json");
        let b: Value =
            serde_json::from_str(r#"{"Properties":{"a":[1,{"y":3,"z":2}],"b":1},"Plugin":"x"}"#)
                .expect("json");
        let f = json!({"Plugin": "flavor-vanilla"});
        assert_eq!(config_hash(&a, &f), config_hash(&b, &f));
        assert_eq!(config_hash(&a, &f).len(), 64);
    }

    #[test]
    fn any_change_changes_the_hash() {
        let i = json!({"Plugin": "instance-file", "Properties": {"Note": "v1"}});
        let j = json!({"Plugin": "instance-file", "Properties": {"Note": "v2"}});
        let f = json!({"Plugin": "flavor-vanilla"});
        assert_ne!(config_hash(&i, &f), config_hash(&j, &f));
        // Swapping the blocks is a different configuration too.
        assert_ne!(config_hash(&i, &f), config_hash(&f, &i));
    }

    #[test]
    fn canonical_text() {
        let mut s = String::new();
        write_canonical(&json!({"b": "q\"uote", "a": [true, null, 1.5]}), &mut s);
        assert_eq!(s, r#"{"a":[true,null,1.5],"b":"q\"uote"}"#);
    }
}
