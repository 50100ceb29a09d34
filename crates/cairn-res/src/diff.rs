//! The events that take a client from one state of a resource to the next:
//! a model's changed properties, a collection's removes and adds.
//!
//! A service that re-reads a resource after a commit diffs it against what
//! it last published, so clients get small events in an order that,
//! applied one after another, gives exactly the new state.

use std::collections::BTreeMap;

use crate::Value;

/// The properties of `new` that differ from `old`: each new value, or
/// `None` for a property gone. Empty when nothing changed.
pub fn diff_model(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> BTreeMap<String, Option<Value>> {
    let mut changed = BTreeMap::new();
    for (key, value) in new {
        if old.get(key) != Some(value) {
            changed.insert(key.clone(), Some(value.clone()));
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            changed.insert(key.clone(), None);
        }
    }
    changed
}

/// One step of a collection's change.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    Remove { idx: usize },
    Add { idx: usize, value: Value },
}

/// The removes, then the adds, that turn `old` into `new`, keeping the
/// longest run of values common to both in place. Removes come from the
/// highest index down, adds from the lowest up, so each index is right
/// when its event is applied.
pub fn diff_collection(old: &[Value], new: &[Value]) -> Vec<Edit> {
    let (n, m) = (old.len(), new.len());
    // Myers' algorithm: O((n + m) d) for d edits, so a list where one
    // value came and one went costs about one pass over it.
    let mut ops = similar::algorithms::Capture::new();
    let Ok(()) = similar::algorithms::myers::diff(&mut ops, old, 0..n, new, 0..m);
    let (mut kept_old, mut kept_new) = (vec![false; n], vec![false; m]);
    for op in ops.into_ops() {
        if let similar::DiffOp::Equal {
            old_index,
            new_index,
            len,
        } = op
        {
            kept_old[old_index..old_index + len].fill(true);
            kept_new[new_index..new_index + len].fill(true);
        }
    }
    let removes = (0..n)
        .rev()
        .filter(|i| !kept_old[*i])
        .map(|idx| Edit::Remove { idx });
    let adds = (0..m).filter(|j| !kept_new[*j]).map(|idx| Edit::Add {
        idx,
        value: new[idx].clone(),
    });
    removes.chain(adds).collect()
}

/// Applies `edits` to `values`, as a client does.
pub fn apply(values: &mut Vec<Value>, edits: &[Edit]) {
    for edit in edits {
        match edit {
            Edit::Remove { idx } => {
                values.remove(*idx);
            }
            Edit::Add { idx, value } => values.insert(*idx, value.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values(items: &[&str]) -> Vec<Value> {
        items.iter().map(|s| Value::from_json(json!(s))).collect()
    }

    #[test]
    fn a_model_diff_names_what_changed_and_what_went() {
        let old: BTreeMap<String, Value> = [
            ("status".to_owned(), Value::from_json(json!("scheduled"))),
            ("gate".to_owned(), Value::from_json(json!("A1"))),
            ("number".to_owned(), Value::from_json(json!("SK1"))),
        ]
        .into();
        let new: BTreeMap<String, Value> = [
            ("status".to_owned(), Value::from_json(json!("departed"))),
            ("number".to_owned(), Value::from_json(json!("SK1"))),
            ("version".to_owned(), Value::from_json(json!(2))),
        ]
        .into();
        let changed = diff_model(&old, &new);
        assert_eq!(
            changed,
            [
                ("gate".to_owned(), None),
                (
                    "status".to_owned(),
                    Some(Value::from_json(json!("departed")))
                ),
                ("version".to_owned(), Some(Value::from_json(json!(2)))),
            ]
            .into()
        );
        assert!(diff_model(&new, &new).is_empty());
    }

    #[test]
    fn collection_edits_turn_the_old_into_the_new() {
        for (old, new) in [
            (vec![], vec!["a", "b"]),
            (vec!["a", "b"], vec![]),
            (vec!["a", "b", "c"], vec!["a", "b", "c"]),
            (vec!["a", "b", "c"], vec!["a", "c"]),
            (vec!["a", "c"], vec!["a", "b", "c"]),
            (vec!["a", "b", "c"], vec!["c", "b", "a"]),
            (vec!["a", "b", "c", "d"], vec!["x", "b", "y", "d", "z"]),
            (vec!["a", "a", "b"], vec!["b", "a", "a"]),
        ] {
            let (old, new) = (values(&old), values(&new));
            let edits = diff_collection(&old, &new);
            let mut applied = old.clone();
            apply(&mut applied, &edits);
            assert_eq!(applied, new, "{old:?} -> {new:?} by {edits:?}");
        }
    }

    #[test]
    fn common_values_stay_and_only_the_difference_is_sent() {
        let edits = diff_collection(&values(&["a", "b", "c"]), &values(&["a", "x", "b", "c"]));
        assert_eq!(
            edits,
            vec![Edit::Add {
                idx: 1,
                value: Value::from_json(json!("x"))
            }]
        );
        let edits = diff_collection(&values(&["a", "b", "c"]), &values(&["a", "c"]));
        assert_eq!(edits, vec![Edit::Remove { idx: 1 }]);
        assert!(diff_collection(&values(&["a"]), &values(&["a"])).is_empty());
    }

    #[test]
    fn random_lists_always_end_right() {
        // A small deterministic generator: no dependency, same cases each run.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let len_old = (next() % 12) as usize;
            let len_new = (next() % 12) as usize;
            let old: Vec<Value> = (0..len_old)
                .map(|_| Value::from_json(json!(next() % 6)))
                .collect();
            let new: Vec<Value> = (0..len_new)
                .map(|_| Value::from_json(json!(next() % 6)))
                .collect();
            let edits = diff_collection(&old, &new);
            let mut applied = old.clone();
            apply(&mut applied, &edits);
            assert_eq!(applied, new);
        }
    }
}
