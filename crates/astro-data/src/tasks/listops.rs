//! ListOps as generated for the Long Range Arena (Tay et al. 2021; Nangia & Bowman 2018),
//! following `lra_benchmarks/data/listops.py`: trees of MIN, MAX, MED (median, truncated) and SM
//! (sum mod 10) over digits 0–9; a node is a digit with probability 0.75 (always at `max_depth`),
//! otherwise an operator with 2..=`max_args` arguments; trees whose length (operators, `]` and
//! digits; parentheses not counted) lies strictly between `min_length` and `max_length` are kept.
//! The input is the token sequence without parentheses; the label is the value (10 classes).
//!
//! Accuracy: the fraction of sequences classified correctly. Solved by the encoder classifier.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Example, invalid};
use crate::error::DataError;

/// Token vocabulary: padding, the four operators, the closing bracket, the digits.
pub const VOCAB: [&str; 16] =
    ["<pad>", "[MIN", "[MAX", "[MED", "[SM", "]", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
const CLOSE: i64 = 5;
const DIGIT0: i64 = 6;

/// Parameters of ListOps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListopsConfig {
    /// Maximum tree depth (LRA: 10).
    #[serde(default = "defaults::max_depth")]
    pub max_depth: usize,
    /// Maximum arguments per operator (LRA: 10).
    #[serde(default = "defaults::max_args")]
    pub max_args: usize,
    /// Kept lengths are greater than this (LRA: 500).
    #[serde(default = "defaults::min_length")]
    pub min_length: usize,
    /// Kept lengths are smaller than this (LRA: 2000).
    #[serde(default = "defaults::max_length")]
    pub max_length: usize,
}

mod defaults {
    pub fn max_depth() -> usize {
        10
    }
    pub fn max_args() -> usize {
        10
    }
    pub fn min_length() -> usize {
        500
    }
    pub fn max_length() -> usize {
        2000
    }
}

#[derive(Debug)]
enum Node {
    Digit(i64),
    Op(i64, Vec<Node>),
}

impl ListopsConfig {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.max_args < 2 {
            return Err(invalid("max_args", "operators take at least 2 arguments"));
        }
        if self.max_depth < 2 {
            return Err(invalid("max_depth", "at least 2 (an operator over digits)"));
        }
        if self.max_length <= self.min_length + 4 {
            return Err(invalid("max_length", format!("must exceed min_length + 4 = {}", self.min_length + 4)));
        }
        Ok(())
    }

    fn tree(&self, depth: usize, rng: &mut ChaCha8Rng) -> (Node, usize) {
        let r: f64 = if depth < self.max_depth { rng.random() } else { 1.0 };
        if r > 0.25 {
            return (Node::Digit(rng.random_range(0..10)), 1);
        }
        let n = rng.random_range(2..=self.max_args);
        let mut length = 2;
        let args: Vec<Node> = (0..n)
            .map(|_| {
                let (t, l) = self.tree(depth + 1, rng);
                length += l;
                t
            })
            .collect();
        (Node::Op(rng.random_range(1..=4), args), length)
    }

    /// One example (rejection-sampled to the length window).
    pub fn example(&self, rng: &mut ChaCha8Rng) -> Example {
        loop {
            let (tree, length) = self.tree(1, rng);
            if length > self.min_length && length < self.max_length {
                let mut inputs = Vec::with_capacity(length);
                tokens(&tree, &mut inputs);
                return Example { inputs, targets: vec![], label: Some(value(&tree)) };
            }
        }
    }
}

fn tokens(node: &Node, out: &mut Vec<i64>) {
    match node {
        Node::Digit(d) => out.push(DIGIT0 + d),
        Node::Op(op, args) => {
            out.push(*op);
            for a in args {
                tokens(a, out);
            }
            out.push(CLOSE);
        }
    }
}

fn value(node: &Node) -> i64 {
    match node {
        Node::Digit(d) => *d,
        Node::Op(op, args) => {
            let mut v: Vec<i64> = args.iter().map(value).collect();
            match op {
                1 => *v.iter().min().expect("≥ 2 args"),
                2 => *v.iter().max().expect("≥ 2 args"),
                3 => {
                    // numpy.median then int(): mean of the middle pair, truncated.
                    v.sort();
                    let n = v.len();
                    if n % 2 == 1 { v[n / 2] } else { ((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0) as i64 }
                }
                _ => v.iter().sum::<i64>() % 10,
            }
        }
    }
}

/// Renders token ids as text (for inspection).
pub fn render(ids: &[i64]) -> String {
    ids.iter().filter(|&&i| i != 0).map(|&i| VOCAB[i as usize]).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Evaluates a rendered expression independently (a small stack machine).
    fn eval(text: &str) -> i64 {
        let mut stack: Vec<(String, Vec<i64>)> = vec![("ROOT".into(), vec![])];
        for tok in text.split_whitespace() {
            match tok {
                "]" => {
                    let (op, mut args) = stack.pop().unwrap();
                    args.sort();
                    let n = args.len();
                    let v = match op.as_str() {
                        "[MIN" => args[0],
                        "[MAX" => args[n - 1],
                        "[MED" => {
                            if n % 2 == 1 {
                                args[n / 2]
                            } else {
                                (args[n / 2 - 1] + args[n / 2]) / 2
                            }
                        }
                        _ => args.iter().sum::<i64>() % 10,
                    };
                    stack.last_mut().unwrap().1.push(v);
                }
                t if t.starts_with('[') => stack.push((t.to_string(), vec![])),
                d => stack.last_mut().unwrap().1.push(d.parse().unwrap()),
            }
        }
        stack[0].1[0]
    }

    #[test]
    fn labels_match_an_independent_evaluator_and_lengths_the_window() {
        let c = ListopsConfig { max_depth: 10, max_args: 10, min_length: 20, max_length: 120 };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..100 {
            let e = c.example(&mut rng);
            assert!(e.inputs.len() > 20 && e.inputs.len() < 120);
            assert_eq!(e.label.unwrap(), eval(&render(&e.inputs)), "{}", render(&e.inputs));
        }
    }

    #[test]
    fn median_truncates_like_numpy() {
        let node = Node::Op(3, vec![Node::Digit(1), Node::Digit(2), Node::Digit(4), Node::Digit(8)]);
        assert_eq!(value(&node), 3); // median 3.0
        let node = Node::Op(3, vec![Node::Digit(1), Node::Digit(2)]);
        assert_eq!(value(&node), 1); // median 1.5 -> 1
    }
}
