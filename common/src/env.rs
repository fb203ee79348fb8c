//! Typed reading of environment variables: every service parses its environment once, at start,
//! into a validated value, and reports every bad variable by name.

use std::collections::BTreeMap;
use std::str::FromStr;

/// A snapshot of the environment (a map, so tests can build one without touching the process).
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

/// One or more variables with bad values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl Env {
    /// The process's environment (variables that are not valid UTF-8 are skipped).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// An environment made of `pairs`.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self { vars: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect() }
    }

    /// The raw value of `name`, if set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Every variable whose name starts with `prefix`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars.iter().filter(move |(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// `APP_ENV`: production refuses unsafe defaults (a missing secret or credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    /// Every secret must be given.
    Production,
    /// Unsafe defaults are allowed, with a warning.
    Development,
}

impl FromStr for AppEnv {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "production" | "prod" => Ok(Self::Production),
            "development" | "dev" => Ok(Self::Development),
            _ => Err("expected production or development".into()),
        }
    }
}

/// Collects the problems of one parse, so all of them are reported at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records a problem.
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// `name` parsed as `T`, `default` when unset; a bad value is recorded and `default` returned.
    pub fn parse<T: FromStr>(&mut self, env: &Env, name: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        match env.get(name) {
            None => default,
            Some(raw) => raw.parse().unwrap_or_else(|e| {
                self.push(format!("{name}={raw:?}: {e}"));
                default
            }),
        }
    }

    /// Like [`Problems::parse`], and the value must lie in `range`.
    pub fn parse_in<T>(&mut self, env: &Env, name: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: FromStr + PartialOrd + std::fmt::Debug + Copy,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(env, name, default);
        if !range.contains(&value) {
            self.push(format!("{name}={value:?} is out of range {:?}..={:?}", range.start(), range.end()));
            return default;
        }
        value
    }

    /// `Ok(value)` when nothing was recorded, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() { Ok(value) } else { Err(ConfigError(self.0)) }
    }

    /// Takes the problems recorded by another parse.
    pub fn absorb(&mut self, other: ConfigError) {
        self.0.extend(other.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_variable_is_reported_by_name() {
        let env = Env::from_pairs([("A", "x"), ("B", "70000"), ("C", "")]);
        let mut p = Problems::default();
        let a: u16 = p.parse(&env, "A", 1);
        let b: u32 = p.parse_in(&env, "B", 2, 1..=65535);
        let c: u8 = p.parse(&env, "C", 3);
        assert_eq!((a, b, c), (1, 2, 3));
        let err = p.finish(()).expect_err("two problems");
        assert_eq!(err.0.len(), 2);
        assert!(err.0[0].starts_with("A=\"x\""));
        assert!(err.0[1].contains("B=70000 is out of range"));
    }
}
