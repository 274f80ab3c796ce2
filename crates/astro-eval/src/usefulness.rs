//! Is a swapped encoder still useful? On held-out sentences, compare its sentence embeddings with
//! the original model's: cosine per sentence, the Spearman correlation between the two models'
//! pairwise cosine similarities, and nearest-neighbour agreement (top-1, top-5).

use serde::Serialize;

use crate::bert::Bert;
use crate::error::EvalError;

/// Sentences of one kind of text.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// Its name (dataset or file).
    pub name: String,
    /// The sentences.
    pub sentences: Vec<String>,
}

impl EvalSet {
    /// `n` sentences spread evenly over `text`: its lines of at least 20 characters (headings
    /// ` = … = ` and speaker lines ending in `:` skipped), split after `.`, `!`, `?`, each kept if
    /// 20–400 characters long; duplicates dropped. Fewer than `n` is an error naming the set.
    pub fn from_text(name: &str, text: &str, n: usize) -> Result<Self, EvalError> {
        let mut seen = std::collections::HashSet::new();
        let candidates: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.chars().count() >= 20 && !l.starts_with('=') && !l.ends_with(':'))
            .flat_map(crate::replicate::sentences)
            .filter(|s| (20..=400).contains(&s.chars().count()))
            .filter(|s| seen.insert(s.clone()))
            .collect();
        if n < 2 || candidates.len() < n {
            return Err(EvalError::Invalid(format!(
                "the evaluation text {name} has {} usable sentences (20–400 characters); {n} were asked for (at least 2)",
                candidates.len()
            )));
        }
        let sentences = (0..n).map(|i| candidates[i * candidates.len() / n].clone()).collect();
        Ok(Self { name: name.to_string(), sentences })
    }
}

/// How one encoder's embeddings of a set compare with the original model's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// Mean cosine between each sentence's two embeddings.
    pub mean_cosine: f64,
    /// The lowest such cosine.
    pub min_cosine: f64,
    /// Spearman's ρ between the two models' cosine similarities over all sentence pairs.
    pub spearman: f64,
    /// Fraction of sentences whose nearest neighbour (by cosine, itself excluded) is the same.
    pub top1: f64,
    /// Mean overlap of the two models' 5 nearest neighbours, as a fraction of 5.
    pub top5: f64,
}

/// Unit-length embeddings of `sentences` by `bert`, in batches of 16 (bounding the hidden activity).
pub fn embed_all(bert: &Bert, sentences: &[String], device: &burn::tensor::Device) -> Result<Vec<Vec<f32>>, EvalError> {
    let mut out = Vec::with_capacity(sentences.len());
    for chunk in sentences.chunks(16) {
        out.extend(bert.embed(chunk, device)?);
    }
    Ok(out)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Ranks (1-based, ties share their mean rank).
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson's r of the ranks). Written here: a dozen lines, no crate
/// of the field offers just this without a dataframe library.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-300)
}

/// Indices of the `k` most similar other sentences to `i` (by `sim`, descending).
fn neighbours(sim: &[Vec<f64>], i: usize, k: usize) -> Vec<usize> {
    let mut others: Vec<usize> = (0..sim.len()).filter(|&j| j != i).collect();
    others.sort_by(|&a, &b| sim[i][b].total_cmp(&sim[i][a]));
    others.truncate(k);
    others
}

/// Compares `other`'s embeddings with `reference`'s (same sentences, unit length, ≥ 2 of them).
pub fn agreement(reference: &[Vec<f32>], other: &[Vec<f32>]) -> Agreement {
    let n = reference.len();
    let cos: Vec<f64> = reference.iter().zip(other).map(|(a, b)| dot(a, b)).collect();
    let sims = |e: &[Vec<f32>]| -> Vec<Vec<f64>> { e.iter().map(|a| e.iter().map(|b| dot(a, b)).collect()).collect() };
    let (sr, so) = (sims(reference), sims(other));
    let pairs = |s: &[Vec<f64>]| -> Vec<f64> {
        (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).map(|(i, j)| s[i][j]).collect()
    };
    let k = 5.min(n - 1);
    let mut top1 = 0.0;
    let mut top5 = 0.0;
    for i in 0..n {
        let (nr, no) = (neighbours(&sr, i, k), neighbours(&so, i, k));
        top1 += f64::from(u8::from(nr[0] == no[0]));
        top5 += nr.iter().filter(|j| no.contains(j)).count() as f64 / k as f64;
    }
    Agreement {
        mean_cosine: cos.iter().sum::<f64>() / n as f64,
        min_cosine: cos.iter().copied().fold(f64::INFINITY, f64::min),
        spearman: spearman(&pairs(&sr), &pairs(&so)),
        top1: top1 / n as f64,
        top5: top5 / n as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_is_one_for_monotone_and_minus_one_for_reversed() {
        let a = [1.0, 2.0, 3.0, 10.0];
        assert!((spearman(&a, &[0.1, 0.2, 0.25, 5.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
    }

    #[test]
    fn identical_embeddings_agree_fully_and_a_swap_is_seen() {
        let unit = |v: [f32; 3]| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let e: Vec<Vec<f32>> =
            [[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.9, 0.2], [0.0, 0.0, 1.0], [0.3, 0.3, 0.9]]
                .map(unit)
                .to_vec();
        let same = agreement(&e, &e);
        assert!((same.mean_cosine - 1.0).abs() < 1e-6 && (same.spearman - 1.0).abs() < 1e-12);
        assert_eq!((same.top1, same.top5), (1.0, 1.0));
        // Sentences 0 and 2 trade embeddings in the other model: neighbours change.
        let mut other = e.clone();
        other.swap(0, 2);
        let a = agreement(&e, &other);
        assert!(a.top1 < 1.0 && a.spearman < 1.0 && a.min_cosine < 0.5, "{a:?}");
    }

    #[test]
    fn sets_are_spread_over_the_text_and_too_few_sentences_are_named() {
        let text = (0..50)
            .map(|i| format!("Sentence number {i} is long enough. Another one, number {i}!"))
            .collect::<Vec<_>>()
            .join("\n");
        let set = EvalSet::from_text("t", &text, 10).unwrap();
        assert_eq!(set.sentences.len(), 10);
        assert_eq!(set.sentences[0], "Sentence number 0 is long enough.");
        assert!(set.sentences.iter().any(|s| s.contains("number 4")));
        let err = EvalSet::from_text("tiny", "Too short.\nROMEO:\n = Heading = ", 2).unwrap_err().to_string();
        assert!(err.contains("tiny") && err.contains("0 usable sentences"), "{err}");
    }
}
