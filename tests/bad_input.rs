//! The bad-input table of `docs/bad-input.md`: every row is one test here.
