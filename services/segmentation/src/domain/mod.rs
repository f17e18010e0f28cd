//! Pure rules of segmentation (no IO): how aggregates become scores, and the segment
//! expression language.

pub mod expr;
pub mod scores;
