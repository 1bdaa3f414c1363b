//! The unit-ownership rule, shared by planner and executor: a plan lists
//! FSDP units with members (block or layer names); a parameter belongs to
//! the unit with the longest member that prefixes its name (on `.`
//! boundaries); parameters no member matches belong to the implicit `root`
//! unit, last (or to a unit the plan names `root`).

use crate::plan::{member_prefixes, owning_unit};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("unit `{unit}`: member `{member}` matches no parameter of the model")]
    UnknownMember { unit: String, member: String },
    #[error("member `{member}` is listed by both unit `{first}` and unit `{second}`")]
    DuplicateMember { member: String, first: String, second: String },
    #[error("two units are named `{0}`")]
    DuplicateUnit(String),
    #[error("unit `{0}` has no members")]
    Empty(String),
}

/// Which unit owns each parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Ownership {
    /// Unit names in order; an implicit `root` comes last when some
    /// parameter needs it.
    pub names: Vec<String>,
    /// For each parameter (in the order given), the index of its unit.
    pub owner: Vec<usize>,
}

impl Ownership {
    /// For each unit, the blocks whose parameters it owns, in order
    /// (`param_block[i]`: the block of parameter i).
    pub fn blocks_of_units(&self, param_block: &[usize]) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.names.len()];
        for (&u, &b) in self.owner.iter().zip(param_block) {
            if !out[u].contains(&b) {
                out[u].push(b);
            }
        }
        for v in &mut out {
            v.sort_unstable();
        }
        out
    }
}

/// Applies the rule to `params` (every parameter name of the model, in
/// the model's order) and the plan's `units` (name, members).
pub fn assign<S: AsRef<str>>(params: &[S], units: &[(String, Vec<String>)]) -> Result<Ownership, UnitError> {
    let mut names: Vec<String> = Vec::new();
    let mut member_owner: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (name, members) in units {
        if names.contains(name) {
            return Err(UnitError::DuplicateUnit(name.clone()));
        }
        if members.is_empty() && name != "root" {
            return Err(UnitError::Empty(name.clone()));
        }
        names.push(name.clone());
        for m in members {
            if let Some(first) = member_owner.insert(m.as_str(), name.as_str()) {
                return Err(UnitError::DuplicateMember { member: m.clone(), first: first.to_string(), second: name.clone() });
            }
        }
    }
    for (name, members) in units {
        for m in members {
            if !params.iter().any(|p| member_prefixes(m, p.as_ref())) {
                return Err(UnitError::UnknownMember { unit: name.clone(), member: m.clone() });
            }
        }
    }
    let mut root = names.iter().position(|n| n == "root");
    let mut owner = Vec::with_capacity(params.len());
    for p in params {
        owner.push(match owning_unit(units.iter().map(|(_, m)| m.as_slice()), p.as_ref()) {
            Some((ui, _)) => ui,
            None => *root.get_or_insert_with(|| {
                names.push("root".to_string());
                names.len() - 1
            }),
        });
    }
    Ok(Ownership { names, owner })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(name: &str, members: &[&str]) -> (String, Vec<String>) {
        (name.to_string(), members.iter().map(|m| m.to_string()).collect())
    }

    #[test]
    fn longest_member_wins_and_the_rest_goes_to_root() {
        let params = ["s4.b0.b.weight", "s4.b0.a.weight", "s4.b1.a.weight", "head.mlp.0.weight"];
        let o = assign(&params, &[u("big conv", &["s4.b0.b"]), u("block", &["s4.b0"]), u("head", &["head"])]).unwrap();
        assert_eq!(o.names, ["big conv", "block", "head", "root"]);
        assert_eq!(o.owner, [0, 1, 3, 2]);
        assert_eq!(o.blocks_of_units(&[4, 4, 5, 6]), vec![vec![4], vec![4], vec![6], vec![5]]);
        // A unit named root takes what no member matches.
        let o = assign(&params, &[u("root", &[]), u("head", &["head"])]).unwrap();
        assert_eq!(o.owner, [0, 0, 0, 1]);
    }

    #[test]
    fn bad_units_name_what_is_wrong() {
        let params = ["s1.b0.a.weight"];
        assert_eq!(assign(&params, &[u("x", &["s9"])]), Err(UnitError::UnknownMember { unit: "x".into(), member: "s9".into() }));
        assert!(matches!(assign(&params, &[u("x", &["s1"]), u("y", &["s1"])]), Err(UnitError::DuplicateMember { .. })));
        assert!(matches!(assign(&params, &[u("x", &["s1"]), u("x", &["s1.b0"])]), Err(UnitError::DuplicateUnit(_))));
        assert!(matches!(assign(&params, &[u("x", &[])]), Err(UnitError::Empty(_))));
    }
}
