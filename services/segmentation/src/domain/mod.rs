//! Pure rules of segmentation (no IO): how aggregates become scores, and the segment
//! expression language.

pub mod clv;
pub mod expr;
pub mod feedback;
pub mod retention;
pub mod scores;
