//! The dynamic-segment expression language, pure (no IO): parsing a segment's definition
//! against the fields the service knows, evaluating it on one customer, explaining why a
//! customer is in or out, and printing it back in one canonical spelling.
//!
//! ```text
//! rfm.segment in ["champions", "loyal"] and m >= 500 and "vip" in tags
//! not (stage = "DECLINE" or stage == "ENDED") and attributes.city != "Paris"
//! ```
//!
//! Segments are written by people and stored for a long time, so every mistake that can be
//! found while parsing (unknown field, comparing a number with a string, a malformed list) is
//! a [`ParseError`] naming the column, rather than a segment that silently matches nobody.
//! Only `attributes.<key>` values have a kind that is known just at evaluation.
//!
//! Absent values: a customer without a value for a field is not equal to anything, so every
//! comparison on it is false except `!=` and `not in`, which are true. The same holds when a
//! value has another kind than the literal it is compared with (an attribute holding text
//! compared with a number): values of different kinds are never equal and never ordered.

use std::collections::BTreeMap;
use std::fmt;

/// Longest accepted expression, in characters. Definitions are typed by people; the bound
/// keeps parsing, error messages and storage cheap whatever a client sends.
pub const MAX_SOURCE_CHARS: usize = 4096;

/// Deepest nesting of parentheses and `not`s. Parsing and evaluation recurse once per level,
/// so this bound is what keeps hostile input from overflowing the stack.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Open prefix of the customer's free-form attributes: any key is accepted, its kind is known
/// only when a customer's value is read.
const ATTRIBUTES_PREFIX: &str = "attributes.";
/// The customer's tags: a list of strings, only testable as `"tag" in tags`.
const TAGS_FIELD: &str = "tags";
const KEYWORDS: [&str; 6] = ["and", "or", "not", "in", "true", "false"];

/// The kind of a fixed field, which decides what it may be compared with at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    Number,
    Text,
    Bool,
}

impl FieldType {
    fn describe(self) -> &'static str {
        match self {
            Self::Number => "a number",
            Self::Text => "text",
            Self::Bool => "a boolean",
        }
    }
}

/// The fields an expression may read: fixed fields with a known kind, plus the open
/// `attributes.<key>` prefix and the special `tags`, which every catalog has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldCatalog {
    fixed: BTreeMap<&'static str, FieldType>,
}

impl FieldCatalog {
    /// A catalog of the given fixed fields (later duplicates win). Names that could never be
    /// written in an expression are ignored rather than rejected, because they can never be
    /// referenced anyway: names outside `[a-z_][a-z0-9_]*(\.[A-Za-z0-9_-]+)*`, keywords, and
    /// the reserved `tags`, `attributes` and `attributes.*`.
    pub fn new(fields: &[(&'static str, FieldType)]) -> Self {
        let fixed = fields
            .iter()
            .copied()
            .filter(|(name, _)| is_declarable_field_name(name))
            .collect();
        Self { fixed }
    }

    /// The kind of a fixed field, `None` when the catalog has no such fixed field.
    pub fn field_type(&self, name: &str) -> Option<FieldType> {
        self.fixed.get(name).copied()
    }

    /// Catalog names close to a misspelt one, best first, so the error can suggest them.
    fn close_names(&self, misspelt: &str) -> Vec<&'static str> {
        let misspelt_len = misspelt.chars().count();
        let tolerance = (misspelt_len / 3).max(1);
        let mut candidates: Vec<(usize, &'static str)> = self
            .fixed
            .keys()
            .copied()
            .chain([TAGS_FIELD])
            .filter_map(|candidate| {
                if misspelt_len >= 2 && candidate.starts_with(misspelt) {
                    return Some((0, candidate));
                }
                if candidate.chars().count().abs_diff(misspelt_len) > tolerance {
                    return None;
                }
                let distance = edit_distance(misspelt, candidate);
                (distance <= tolerance).then_some((distance, candidate))
            })
            .collect();
        candidates.sort();
        candidates.into_iter().map(|(_, name)| name).take(3).collect()
    }
}

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|keyword| keyword.eq_ignore_ascii_case(word))
}

fn is_key_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_' || character == '-'
}

fn is_declarable_field_name(name: &str) -> bool {
    let mut segments = name.split('.');
    let first_is_valid = segments.next().is_some_and(|first| {
        let mut chars = first.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    });
    let rest_is_valid = segments.all(|segment| !segment.is_empty() && segment.chars().all(is_key_char));
    let reserved = name == TAGS_FIELD
        || name == "attributes"
        || name.starts_with(ATTRIBUTES_PREFIX)
        || (!name.contains('.') && is_keyword(name));
    first_is_valid && rest_is_valid && !reserved
}

/// Levenshtein distance over characters, for "did you mean" suggestions.
fn edit_distance(from: &str, to: &str) -> usize {
    let to_chars: Vec<char> = to.chars().collect();
    let mut previous_row: Vec<usize> = (0..=to_chars.len()).collect();
    for (from_index, from_char) in from.chars().enumerate() {
        let mut current_row = Vec::with_capacity(previous_row.len());
        current_row.push(from_index + 1);
        for (to_char, pair) in to_chars.iter().zip(previous_row.windows(2)) {
            let [diagonal, above] = pair else { continue };
            let left = current_row.last().copied().unwrap_or(0);
            let substitution = diagonal + usize::from(from_char != *to_char);
            current_row.push(substitution.min(above + 1).min(left + 1));
        }
        previous_row = current_row;
    }
    previous_row.last().copied().unwrap_or(0)
}

/// What a customer holds for a field, and what a literal in an expression is.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl Value {
    fn kind(&self) -> FieldType {
        match self {
            Self::Number(_) => FieldType::Number,
            Self::Text(_) => FieldType::Text,
            Self::Bool(_) => FieldType::Bool,
        }
    }
}

/// Written as a literal of the language, so explanations show values the way a segment
/// author would type them.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `{}` of an f64 never uses exponent notation, so the text lexes back as a number.
            Self::Number(number) => write!(f, "{number}"),
            Self::Text(text) => write_quoted(f, text),
            Self::Bool(flag) => write!(f, "{flag}"),
        }
    }
}

fn write_quoted(f: &mut impl fmt::Write, text: &str) -> fmt::Result {
    f.write_char('"')?;
    for character in text.chars() {
        if matches!(character, '"' | '\\') {
            f.write_char('\\')?;
        }
        f.write_char(character)?;
    }
    f.write_char('"')
}

/// One customer as an expression sees it.
pub trait Subject {
    /// The value of a fixed field or `attributes.<key>`; None when the customer has none.
    fn value(&self, field: &str) -> Option<Value>;
    fn has_tag(&self, tag: &str) -> bool;
}

/// Why a definition was rejected: `position` is the 1-based character column in the source
/// (the source is counted as one line; the end of input is one past its last character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl ParseError {
    fn at(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ParseError {}

/// The outcome of one leaf comparison for one customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClauseOutcome {
    /// Canonical text of the leaf, e.g. `m >= 500`.
    pub clause: String,
    /// Whether the leaf itself held (an enclosing `not` is reflected only in the overall result).
    pub matched: bool,
    /// The customer's value as a literal (`"loyal"`, `420`), `present`/`absent` for a tag
    /// test, `None` when the customer has no value.
    pub actual: Option<String>,
}

/// "Why is this customer in (or out of) the segment": every leaf in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub matched: bool,
    pub clauses: Vec<ClauseOutcome>,
}

/// A parsed, type-checked segment definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
}

/// `and`/`or` are n-ary and flattened, so `a and (b and c)` and `a and b and c` are one tree,
/// compare equal and print alike, without the redundant parentheses.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Or(Vec<Node>),
    And(Vec<Node>),
    Not(Box<Node>),
    Leaf(Clause),
}

#[derive(Debug, Clone, PartialEq)]
enum Clause {
    Compare {
        field: FieldRef,
        op: CompareOp,
        literal: Value,
    },
    InList {
        field: FieldRef,
        negated: bool,
        items: Vec<Value>,
    },
    HasTag {
        tag: String,
        negated: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct FieldRef {
    name: String,
    /// The catalog's kind for a fixed field; `None` for `attributes.<key>`, whose kind is
    /// known only at evaluation.
    declared_type: Option<FieldType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, Self::Eq | Self::Ne)
    }

    fn accepts(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Self::Eq => ordering == Equal,
            Self::Ne => ordering != Equal,
            Self::Lt => ordering == Less,
            Self::Le => ordering != Greater,
            Self::Gt => ordering == Greater,
            Self::Ge => ordering != Less,
        }
    }
}

/// Parses and type-checks a segment definition against the fields the service knows.
///
/// Guarantees for every `Ok(expr)`: `parse(&expr.canonical(), catalog) == Ok(expr)`; sources
/// whose canonical text would exceed [`MAX_SOURCE_CHARS`] are rejected so that this holds.
pub fn parse(source: &str, catalog: &FieldCatalog) -> Result<Expr, ParseError> {
    if source.chars().nth(MAX_SOURCE_CHARS).is_some() {
        return Err(ParseError::at(
            MAX_SOURCE_CHARS + 1,
            format!("expression longer than {MAX_SOURCE_CHARS} characters"),
        ));
    }
    let expr = parse_unbounded(source, catalog)?;
    let canonical_chars = expr.canonical().chars().count();
    if canonical_chars > MAX_SOURCE_CHARS {
        return Err(ParseError::at(
            1,
            format!(
                "expression too long: its normalised form has {canonical_chars} characters, \
                 more than {MAX_SOURCE_CHARS}"
            ),
        ));
    }
    Ok(expr)
}

/// Parsing without the length limit, so tests can show the nesting cap alone holds the stack.
fn parse_unbounded(source: &str, catalog: &FieldCatalog) -> Result<Expr, ParseError> {
    let (tokens, end) = tokenize(source)?;
    let mut parser = Parser {
        tokens,
        end,
        next: 0,
        catalog,
    };
    let root = parser.parse_or(0)?;
    let trailing = parser.peek();
    if trailing.kind != TokenKind::End {
        return Err(ParseError::at(
            trailing.column,
            format!(
                "expected `and`, `or` or end of input, found {}",
                trailing.kind.describe()
            ),
        ));
    }
    Ok(Expr { root })
}

impl Expr {
    /// Whether the customer is in the segment.
    pub fn matches(&self, subject: &dyn Subject) -> bool {
        self.root.matches(subject)
    }

    /// Every leaf comparison with whether it held and the value seen, in source order, plus
    /// the overall result: "why is this customer in it". Every leaf is evaluated (no
    /// short-circuit) so the explanation is complete.
    pub fn explain(&self, subject: &dyn Subject) -> Explanation {
        let mut clauses = Vec::new();
        let matched = self.root.explain(subject, &mut clauses);
        Explanation { matched, clauses }
    }

    /// Canonical text (normalised spacing, lowercase keywords, `=` for equality, strings
    /// re-quoted, no redundant parentheses), so equal definitions are stored and compared as
    /// equal text; `parse` of it gives this expression back.
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    /// The fixed fields it reads, each once in source order, so the service loads only those.
    pub fn fields(&self) -> Vec<String> {
        self.collect_field_names(|field| field.declared_type.is_some())
    }

    /// The `attributes.<key>` fields it reads (full names, as passed to [`Subject::value`]),
    /// each once in source order, so the service knows whether and which attributes to load.
    pub fn attribute_fields(&self) -> Vec<String> {
        self.collect_field_names(|field| field.declared_type.is_none())
    }

    /// Whether it tests tags, so the service loads a customer's tags only when needed.
    pub fn reads_tags(&self) -> bool {
        let mut reads_tags = false;
        self.root.for_each_clause(&mut |clause| {
            reads_tags |= matches!(clause, Clause::HasTag { .. });
        });
        reads_tags
    }

    fn collect_field_names(&self, wanted: impl Fn(&FieldRef) -> bool) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        self.root.for_each_clause(&mut |clause| {
            let field = match clause {
                Clause::Compare { field, .. } | Clause::InList { field, .. } => field,
                Clause::HasTag { .. } => return,
            };
            if wanted(field) && !names.contains(&field.name) {
                names.push(field.name.clone());
            }
        });
        names
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.write_canonical(f)
    }
}

impl Node {
    /// `or` of the operands, splicing nested `or`s so the tree stays flat.
    fn any_of(operands: Vec<Node>) -> Node {
        let mut flat = Vec::with_capacity(operands.len());
        for operand in operands {
            match operand {
                Node::Or(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.pop() {
            Some(only) if flat.is_empty() => only,
            Some(last) => {
                flat.push(last);
                Node::Or(flat)
            }
            None => Node::Or(flat),
        }
    }

    /// `and` of the operands, splicing nested `and`s so the tree stays flat.
    fn all_of(operands: Vec<Node>) -> Node {
        let mut flat = Vec::with_capacity(operands.len());
        for operand in operands {
            match operand {
                Node::And(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        match flat.pop() {
            Some(only) if flat.is_empty() => only,
            Some(last) => {
                flat.push(last);
                Node::And(flat)
            }
            None => Node::And(flat),
        }
    }

    fn matches(&self, subject: &dyn Subject) -> bool {
        match self {
            Node::Or(operands) => operands.iter().any(|operand| operand.matches(subject)),
            Node::And(operands) => operands.iter().all(|operand| operand.matches(subject)),
            Node::Not(operand) => !operand.matches(subject),
            Node::Leaf(clause) => clause.holds(subject),
        }
    }

    fn explain(&self, subject: &dyn Subject, clauses: &mut Vec<ClauseOutcome>) -> bool {
        match self {
            Node::Or(operands) => {
                let mut any_held = false;
                for operand in operands {
                    any_held |= operand.explain(subject, clauses);
                }
                any_held
            }
            Node::And(operands) => {
                let mut all_held = true;
                for operand in operands {
                    all_held &= operand.explain(subject, clauses);
                }
                all_held
            }
            Node::Not(operand) => !operand.explain(subject, clauses),
            Node::Leaf(clause) => {
                let matched = clause.holds(subject);
                clauses.push(ClauseOutcome {
                    clause: clause.to_string(),
                    matched,
                    actual: clause.actual(subject),
                });
                matched
            }
        }
    }

    fn for_each_clause(&self, visit: &mut impl FnMut(&Clause)) {
        match self {
            Node::Or(operands) | Node::And(operands) => {
                for operand in operands {
                    operand.for_each_clause(visit);
                }
            }
            Node::Not(operand) => operand.for_each_clause(visit),
            Node::Leaf(clause) => visit(clause),
        }
    }

    /// Parentheses only where the tree needs them; each one printed stands for one the source
    /// must have had, and `not` of a comparison or of `not` prints none, so the canonical text
    /// never nests deeper than the source and always parses back under the nesting cap.
    fn write_canonical(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Or(operands) => {
                for (index, operand) in operands.iter().enumerate() {
                    if index > 0 {
                        f.write_str(" or ")?;
                    }
                    operand.write_canonical(f)?;
                }
                Ok(())
            }
            Node::And(operands) => {
                for (index, operand) in operands.iter().enumerate() {
                    if index > 0 {
                        f.write_str(" and ")?;
                    }
                    operand.write_parenthesised_if_compound(f, matches!(operand, Node::Or(_)))?;
                }
                Ok(())
            }
            Node::Not(operand) => {
                f.write_str("not ")?;
                operand.write_parenthesised_if_compound(f, matches!(**operand, Node::Or(_) | Node::And(_)))
            }
            Node::Leaf(clause) => write!(f, "{clause}"),
        }
    }

    fn write_parenthesised_if_compound(
        &self,
        f: &mut fmt::Formatter<'_>,
        needs_parentheses: bool,
    ) -> fmt::Result {
        if needs_parentheses {
            f.write_str("(")?;
            self.write_canonical(f)?;
            f.write_str(")")
        } else {
            self.write_canonical(f)
        }
    }
}

impl Clause {
    fn holds(&self, subject: &dyn Subject) -> bool {
        match self {
            Clause::Compare { field, op, literal } => {
                compare(subject.value(&field.name).as_ref(), *op, literal)
            }
            Clause::InList {
                field,
                negated,
                items,
            } => {
                let actual = subject.value(&field.name);
                let listed = items
                    .iter()
                    .any(|item| compare(actual.as_ref(), CompareOp::Eq, item));
                listed != *negated
            }
            Clause::HasTag { tag, negated } => subject.has_tag(tag) != *negated,
        }
    }

    fn actual(&self, subject: &dyn Subject) -> Option<String> {
        match self {
            Clause::Compare { field, .. } | Clause::InList { field, .. } => {
                subject.value(&field.name).map(|value| value.to_string())
            }
            Clause::HasTag { tag, .. } => {
                Some(if subject.has_tag(tag) { "present" } else { "absent" }.to_owned())
            }
        }
    }
}

/// Absent is not equal to anything, and neither is a value of another kind: both make every
/// comparison false except `!=`. Numbers compare as f64 (NaN is unordered), text by Unicode
/// code points, booleans only for (in)equality.
fn compare(actual: Option<&Value>, op: CompareOp, literal: &Value) -> bool {
    let ordering = match (actual, literal) {
        (Some(Value::Number(actual)), Value::Number(expected)) => actual.partial_cmp(expected),
        (Some(Value::Text(actual)), Value::Text(expected)) => Some(actual.cmp(expected)),
        (Some(Value::Bool(actual)), Value::Bool(expected)) if !op.is_ordering() => Some(actual.cmp(expected)),
        _ => None,
    };
    match ordering {
        Some(ordering) => op.accepts(ordering),
        None => op == CompareOp::Ne,
    }
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Clause::Compare { field, op, literal } => write!(f, "{} {} {literal}", field.name, op.symbol()),
            Clause::InList {
                field,
                negated,
                items,
            } => {
                let keyword = if *negated { "not in" } else { "in" };
                write!(f, "{} {keyword} [", field.name)?;
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Clause::HasTag { tag, negated } => {
                write_quoted(f, tag)?;
                let keyword = if *negated { "not in" } else { "in" };
                write!(f, " {keyword} {TAGS_FIELD}")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lexing

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Field(String),
    Text(String),
    Number(f64),
    Bool(bool),
    And,
    Or,
    Not,
    In,
    OpenParen,
    CloseParen,
    OpenBracket,
    CloseBracket,
    Comma,
    Compare(CompareOp),
    End,
}

impl TokenKind {
    /// How an error message names what it found instead of what it expected.
    fn describe(&self) -> String {
        match self {
            Self::Field(name) => format!("field `{name}`"),
            Self::Text(text) => format!("string {}", Value::Text(text.clone())),
            Self::Number(number) => format!("number {number}"),
            Self::Bool(flag) => format!("`{flag}`"),
            Self::And => "`and`".to_owned(),
            Self::Or => "`or`".to_owned(),
            Self::Not => "`not`".to_owned(),
            Self::In => "`in`".to_owned(),
            Self::OpenParen => "`(`".to_owned(),
            Self::CloseParen => "`)`".to_owned(),
            Self::OpenBracket => "`[`".to_owned(),
            Self::CloseBracket => "`]`".to_owned(),
            Self::Comma => "`,`".to_owned(),
            Self::Compare(op) => format!("`{}`", op.symbol()),
            Self::End => "end of input".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: TokenKind,
    /// 1-based character column of the token's first character.
    column: usize,
}

/// The tokens of the source, and the end-of-input token (at one past the last character).
fn tokenize(source: &str) -> Result<(Vec<Token>, Token), ParseError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while let Some(&current) = chars.get(index) {
        let column = index + 1;
        if current.is_whitespace() {
            index += 1;
            continue;
        }
        let followed_by_equals = chars.get(index + 1) == Some(&'=');
        let (kind, next_index) = match current {
            '(' => (TokenKind::OpenParen, index + 1),
            ')' => (TokenKind::CloseParen, index + 1),
            '[' => (TokenKind::OpenBracket, index + 1),
            ']' => (TokenKind::CloseBracket, index + 1),
            ',' => (TokenKind::Comma, index + 1),
            '=' if followed_by_equals => (TokenKind::Compare(CompareOp::Eq), index + 2),
            '=' => (TokenKind::Compare(CompareOp::Eq), index + 1),
            '!' if followed_by_equals => (TokenKind::Compare(CompareOp::Ne), index + 2),
            '!' => {
                return Err(ParseError::at(
                    column,
                    "unexpected `!`: inequality is written `!=`",
                ));
            }
            '<' if followed_by_equals => (TokenKind::Compare(CompareOp::Le), index + 2),
            '<' => (TokenKind::Compare(CompareOp::Lt), index + 1),
            '>' if followed_by_equals => (TokenKind::Compare(CompareOp::Ge), index + 2),
            '>' => (TokenKind::Compare(CompareOp::Gt), index + 1),
            '"' => lex_string(&chars, index)?,
            '-' | '0'..='9' => lex_number(&chars, index)?,
            'a'..='z' | 'A'..='Z' | '_' => lex_word(&chars, index)?,
            other => return Err(ParseError::at(column, format!("unexpected character `{other}`"))),
        };
        tokens.push(Token { kind, column });
        index = next_index;
    }
    let end = Token {
        kind: TokenKind::End,
        column: chars.len() + 1,
    };
    Ok((tokens, end))
}

fn lex_string(chars: &[char], opening_quote: usize) -> Result<(TokenKind, usize), ParseError> {
    let unterminated = || ParseError::at(opening_quote + 1, "unterminated string");
    let mut text = String::new();
    let mut index = opening_quote + 1;
    loop {
        match chars.get(index) {
            None => return Err(unterminated()),
            Some('"') => return Ok((TokenKind::Text(text), index + 1)),
            Some('\\') => match chars.get(index + 1) {
                Some(&escaped @ ('"' | '\\')) => {
                    text.push(escaped);
                    index += 2;
                }
                Some(other) => {
                    return Err(ParseError::at(
                        index + 1,
                        format!("unknown escape `\\{other}`: only `\\\"` and `\\\\` are allowed"),
                    ));
                }
                None => return Err(unterminated()),
            },
            Some(&character) => {
                text.push(character);
                index += 1;
            }
        }
    }
}

fn lex_number(chars: &[char], start: usize) -> Result<(TokenKind, usize), ParseError> {
    let mut text = String::new();
    let mut index = start;
    if chars.get(index) == Some(&'-') {
        text.push('-');
        index += 1;
    }
    let push_digits = |text: &mut String, index: &mut usize| -> bool {
        let mut any = false;
        while let Some(&digit) = chars.get(*index).filter(|c| c.is_ascii_digit()) {
            text.push(digit);
            *index += 1;
            any = true;
        }
        any
    };
    if !push_digits(&mut text, &mut index) {
        return Err(ParseError::at(index + 1, "expected digits after `-`"));
    }
    if chars.get(index) == Some(&'.') {
        text.push('.');
        index += 1;
        if !push_digits(&mut text, &mut index) {
            return Err(ParseError::at(
                index + 1,
                "expected digits after the decimal point",
            ));
        }
    }
    if let Some(&after) = chars
        .get(index)
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '.'))
    {
        return Err(ParseError::at(
            index + 1,
            format!("unexpected `{after}` in a number"),
        ));
    }
    match text.parse::<f64>() {
        Ok(number) if number.is_finite() => Ok((TokenKind::Number(number), index)),
        _ => Err(ParseError::at(start + 1, "number out of range")),
    }
}

/// A keyword, or a field name `word(.key)*`; whether the field exists is the parser's call.
fn lex_word(chars: &[char], start: usize) -> Result<(TokenKind, usize), ParseError> {
    let mut word = String::new();
    let mut index = start;
    while let Some(&character) = chars
        .get(index)
        .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
    {
        word.push(character);
        index += 1;
    }
    let mut dotted = false;
    while chars.get(index) == Some(&'.') {
        if !chars.get(index + 1).is_some_and(|c| is_key_char(*c)) {
            return Err(ParseError::at(
                index + 2,
                format!("expected a name after `{word}.`"),
            ));
        }
        dotted = true;
        word.push('.');
        index += 1;
        while let Some(&character) = chars.get(index).filter(|c| is_key_char(**c)) {
            word.push(character);
            index += 1;
        }
    }
    let kind = if dotted {
        TokenKind::Field(word)
    } else {
        match word.to_ascii_lowercase().as_str() {
            "and" => TokenKind::And,
            "or" => TokenKind::Or,
            "not" => TokenKind::Not,
            "in" => TokenKind::In,
            "true" => TokenKind::Bool(true),
            "false" => TokenKind::Bool(false),
            _ => TokenKind::Field(word),
        }
    };
    Ok((kind, index))
}

// ---------------------------------------------------------------------------------------
// Parsing: or_expr := and_expr ("or" and_expr)*; and_expr := unary ("and" unary)*;
// unary := "not" unary | "(" or_expr ")" | comparison

struct Parser<'catalog> {
    tokens: Vec<Token>,
    end: Token,
    next: usize,
    catalog: &'catalog FieldCatalog,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        self.tokens.get(self.next).unwrap_or(&self.end)
    }

    fn peek_after_next(&self) -> &Token {
        self.tokens.get(self.next + 1).unwrap_or(&self.end)
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if self.next < self.tokens.len() {
            self.next += 1;
        }
        token
    }

    fn parse_or(&mut self, depth: usize) -> Result<Node, ParseError> {
        let mut operands = vec![self.parse_and(depth)?];
        while self.peek().kind == TokenKind::Or {
            self.advance();
            operands.push(self.parse_and(depth)?);
        }
        Ok(Node::any_of(operands))
    }

    fn parse_and(&mut self, depth: usize) -> Result<Node, ParseError> {
        let mut operands = vec![self.parse_unary(depth)?];
        while self.peek().kind == TokenKind::And {
            self.advance();
            operands.push(self.parse_unary(depth)?);
        }
        Ok(Node::all_of(operands))
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Node, ParseError> {
        let token = self.peek();
        let opens_level = matches!(token.kind, TokenKind::Not | TokenKind::OpenParen);
        if opens_level && depth >= MAX_NESTING_DEPTH {
            return Err(ParseError::at(
                token.column,
                format!("nested too deep: at most {MAX_NESTING_DEPTH} levels of parentheses and `not`"),
            ));
        }
        match token.kind {
            TokenKind::Not => {
                self.advance();
                Ok(Node::Not(Box::new(self.parse_unary(depth + 1)?)))
            }
            TokenKind::OpenParen => {
                let opening_column = self.advance().column;
                let inner = self.parse_or(depth + 1)?;
                let closing = self.advance();
                if closing.kind != TokenKind::CloseParen {
                    return Err(ParseError::at(
                        closing.column,
                        format!(
                            "expected `)` to close the `(` at column {opening_column}, found {}",
                            closing.kind.describe()
                        ),
                    ));
                }
                Ok(inner)
            }
            _ => self.parse_comparison().map(Node::Leaf),
        }
    }

    fn parse_comparison(&mut self) -> Result<Clause, ParseError> {
        let first = self.advance();
        match first.kind {
            TokenKind::Text(tag) => self.parse_tag_test(tag),
            TokenKind::Field(name) => {
                let field = self.resolve_field(name, first.column)?;
                self.parse_field_test(field)
            }
            other => Err(ParseError::at(
                first.column,
                format!(
                    "expected a condition (a field such as `m >= 500`, `\"tag\" in tags`, `not` or `(`), \
                     found {}",
                    other.describe()
                ),
            )),
        }
    }

    /// After a string on the left: only `in tags` / `not in tags` can follow.
    fn parse_tag_test(&mut self, tag: String) -> Result<Clause, ParseError> {
        let negated = self.peek().kind == TokenKind::Not;
        if negated {
            self.advance();
        }
        let keyword = self.advance();
        if keyword.kind != TokenKind::In {
            return Err(ParseError::at(
                keyword.column,
                format!(
                    "a string on the left tests a tag: expected `in tags` or `not in tags`, found {}",
                    keyword.kind.describe()
                ),
            ));
        }
        let target = self.advance();
        match target.kind {
            TokenKind::Field(name) if name == TAGS_FIELD => Ok(Clause::HasTag { tag, negated }),
            TokenKind::Field(name) => {
                let kind_note = match self.resolve_field(name.clone(), target.column)?.declared_type {
                    Some(field_type) => format!("`{name}` is {}", field_type.describe()),
                    None => format!("`{name}` is a single value"),
                };
                Err(ParseError::at(
                    target.column,
                    format!("`in` on a string tests tags, so expected `tags`; {kind_note}, not a list"),
                ))
            }
            other => Err(ParseError::at(
                target.column,
                format!(
                    "`in` on a string tests tags: expected `tags`, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn parse_field_test(&mut self, field: FieldRef) -> Result<Clause, ParseError> {
        let next = self.peek().clone();
        match next.kind {
            TokenKind::Compare(op) => {
                self.advance();
                let literal_column = self.peek().column;
                let literal = self.parse_value()?;
                check_kind(&field, &literal, literal_column)?;
                if op.is_ordering() && literal.kind() == FieldType::Bool {
                    return Err(ParseError::at(
                        next.column,
                        format!(
                            "`{}` does not apply to booleans: only `=` and `!=` do",
                            op.symbol()
                        ),
                    ));
                }
                Ok(Clause::Compare { field, op, literal })
            }
            TokenKind::In => {
                self.advance();
                let items = self.parse_list(&field)?;
                Ok(Clause::InList {
                    field,
                    negated: false,
                    items,
                })
            }
            TokenKind::Not if self.peek_after_next().kind == TokenKind::In => {
                self.advance();
                self.advance();
                let items = self.parse_list(&field)?;
                Ok(Clause::InList {
                    field,
                    negated: true,
                    items,
                })
            }
            _ => match field.declared_type {
                // A bare boolean field reads as `= true`; attributes may hold a boolean.
                Some(FieldType::Bool) | None => Ok(Clause::Compare {
                    field,
                    op: CompareOp::Eq,
                    literal: Value::Bool(true),
                }),
                Some(field_type) => Err(ParseError::at(
                    next.column,
                    format!(
                        "expected an operator (`=`, `!=`, `<`, `<=`, `>`, `>=`, `in`) after `{}`, which is {}, \
                         found {}",
                        field.name,
                        field_type.describe(),
                        next.kind.describe()
                    ),
                )),
            },
        }
    }

    fn parse_value(&mut self) -> Result<Value, ParseError> {
        let token = self.advance();
        match token.kind {
            TokenKind::Number(number) => Ok(Value::Number(number)),
            TokenKind::Text(text) => Ok(Value::Text(text)),
            TokenKind::Bool(flag) => Ok(Value::Bool(flag)),
            TokenKind::OpenBracket => Err(ParseError::at(
                token.column,
                "expected a value, found `[`: lists go with `in`",
            )),
            other => Err(ParseError::at(
                token.column,
                format!("expected a value, found {}", other.describe()),
            )),
        }
    }

    fn parse_list(&mut self, field: &FieldRef) -> Result<Vec<Value>, ParseError> {
        let opening = self.advance();
        if opening.kind != TokenKind::OpenBracket {
            return Err(ParseError::at(
                opening.column,
                format!(
                    "expected `[` to start a list after `in`, found {}",
                    opening.kind.describe()
                ),
            ));
        }
        if self.peek().kind == TokenKind::CloseBracket {
            return Err(ParseError::at(
                opening.column,
                "empty list: a list needs at least one value",
            ));
        }
        let mut items: Vec<Value> = Vec::new();
        loop {
            let item_column = self.peek().column;
            let item = self.parse_value()?;
            check_kind(field, &item, item_column)?;
            if let Some(first) = items.first().filter(|first| first.kind() != item.kind()) {
                return Err(ParseError::at(
                    item_column,
                    format!(
                        "mixed list: {item} is {} but the list starts with {}",
                        item.kind().describe(),
                        first.kind().describe()
                    ),
                ));
            }
            items.push(item);
            let separator = self.advance();
            match separator.kind {
                TokenKind::Comma => {}
                TokenKind::CloseBracket => return Ok(items),
                other => {
                    return Err(ParseError::at(
                        separator.column,
                        format!("expected `,` or `]` in the list, found {}", other.describe()),
                    ));
                }
            }
        }
    }

    fn resolve_field(&self, name: String, column: usize) -> Result<FieldRef, ParseError> {
        if name == TAGS_FIELD {
            return Err(ParseError::at(
                column,
                "`tags` is a list of strings: test it as `\"tag\" in tags` or `\"tag\" not in tags`",
            ));
        }
        if name.starts_with(ATTRIBUTES_PREFIX) {
            return Ok(FieldRef {
                name,
                declared_type: None,
            });
        }
        if name == "attributes" {
            return Err(ParseError::at(
                column,
                "`attributes` needs a key, e.g. `attributes.city`",
            ));
        }
        if let Some(field_type) = self.catalog.field_type(&name) {
            return Ok(FieldRef {
                name,
                declared_type: Some(field_type),
            });
        }
        let close_names = self.catalog.close_names(&name);
        let hint = if !close_names.is_empty() {
            let listed: Vec<String> = close_names.iter().map(|close| format!("`{close}`")).collect();
            format!("; did you mean {}?", listed.join(" or "))
        } else if !name.contains('.') {
            format!(" (custom attributes are written `{ATTRIBUTES_PREFIX}{name}`)")
        } else {
            String::new()
        };
        Err(ParseError::at(column, format!("unknown field `{name}`{hint}")))
    }
}

/// A literal must have the fixed field's kind; attributes accept any kind at parse time.
fn check_kind(field: &FieldRef, literal: &Value, column: usize) -> Result<(), ParseError> {
    match field.declared_type {
        Some(field_type) if field_type != literal.kind() => Err(ParseError::at(
            column,
            format!(
                "`{}` is {}, found {literal} which is {}",
                field.name,
                field_type.describe(),
                literal.kind().describe()
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::HashMap;

    use super::*;

    const EXAMPLES: [&str; 4] = [
        r#"rfm.segment in ["champions", "loyal"] and m >= 500 and "vip" in tags"#,
        r#"not (stage = "DECLINE" or stage == "ENDED") and attributes.city != "Paris""#,
        r#"r >= 4 and (f > 2 or monetary > 100000) and attributes.vip = true"#,
        r#""vip" not in tags and abc in ["A", "B"]"#,
    ];

    fn catalog() -> FieldCatalog {
        FieldCatalog::new(&[
            ("r", FieldType::Number),
            ("f", FieldType::Number),
            ("m", FieldType::Number),
            ("monetary", FieldType::Number),
            ("rfm.segment", FieldType::Text),
            ("stage", FieldType::Text),
            ("abc", FieldType::Text),
            ("active", FieldType::Bool),
            ("churned", FieldType::Bool),
            ("opted_in", FieldType::Bool),
        ])
    }

    #[derive(Default)]
    struct Customer {
        values: HashMap<String, Value>,
        tags: Vec<String>,
    }

    impl Customer {
        fn with(mut self, field: &str, value: Value) -> Self {
            self.values.insert(field.to_owned(), value);
            self
        }
        fn num(self, field: &str, number: f64) -> Self {
            self.with(field, Value::Number(number))
        }
        fn text(self, field: &str, text: &str) -> Self {
            self.with(field, Value::Text(text.to_owned()))
        }
        fn flag(self, field: &str, flag: bool) -> Self {
            self.with(field, Value::Bool(flag))
        }
        fn tag(mut self, tag: &str) -> Self {
            self.tags.push(tag.to_owned());
            self
        }
    }

    impl Subject for Customer {
        fn value(&self, field: &str) -> Option<Value> {
            self.values.get(field).cloned()
        }
        fn has_tag(&self, tag: &str) -> bool {
            self.tags.iter().any(|held| held == tag)
        }
    }

    fn expr(source: &str) -> Expr {
        parse(source, &catalog()).unwrap_or_else(|error| panic!("{source:?}: {error}"))
    }

    fn error(source: &str) -> ParseError {
        match parse(source, &catalog()) {
            Ok(parsed) => panic!("{source:?} parsed as {parsed}"),
            Err(error) => error,
        }
    }

    fn assert_error(source: &str, column: usize, fragment: &str) {
        let error = error(source);
        assert_eq!(error.position, column, "{source:?}: {error}");
        assert!(
            error.message.contains(fragment),
            "{source:?}: {error} lacks {fragment:?}"
        );
    }

    fn holds(source: &str, customer: &Customer) -> bool {
        let parsed = expr(source);
        let explained = parsed.explain(customer);
        assert_eq!(explained.matched, parsed.matches(customer), "{source:?}");
        parsed.matches(customer)
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_and() {
        assert_eq!(
            expr("active or churned and opted_in"),
            expr("active or (churned and opted_in)")
        );
        assert_ne!(
            expr("active or churned and opted_in"),
            expr("(active or churned) and opted_in")
        );
        assert_eq!(expr("not active and churned"), expr("(not active) and churned"));
        assert_eq!(
            expr("NOT active AND churned Or opted_in"),
            expr("((not active) and churned) or opted_in")
        );

        let only_active = Customer::default().flag("active", true);
        assert!(holds("active or churned and opted_in", &only_active));
        assert!(!holds("(active or churned) and opted_in", &only_active));
        assert!(!holds("not active and churned", &only_active));
        assert!(holds("not (active and churned)", &only_active));
        assert!(holds("not not active", &only_active));
    }

    #[test]
    fn parentheses_and_chains_flatten_to_one_canonical_form() {
        assert_eq!(
            expr("active and (churned and opted_in)"),
            expr("active and churned and opted_in")
        );
        assert_eq!(expr("((active))"), expr("active"));
        assert_eq!(
            expr("active and (churned or opted_in)").canonical(),
            "active = true and (churned = true or opted_in = true)"
        );
        assert_eq!(
            expr("(active and churned) or opted_in").canonical(),
            "active = true and churned = true or opted_in = true"
        );
        assert_eq!(expr("not (m > 1)").canonical(), "not m > 1");
        assert_eq!(expr("not (m > 1 or m < 0)").canonical(), "not (m > 1 or m < 0)");
        assert_eq!(expr("not not (m > 1)").canonical(), "not not m > 1");
    }

    #[test]
    fn every_operator_on_numbers() {
        let customer = Customer::default().num("m", 500.0);
        for (source, expected) in [
            ("m = 500", true),
            ("m == 500", true),
            ("m = 500.0", true),
            ("m != 500", false),
            ("m != 499.5", true),
            ("m < 500", false),
            ("m < 500.01", true),
            ("m <= 500", true),
            ("m > 500", false),
            ("m > -3", true),
            ("m >= 500", true),
            ("m>=501", false),
        ] {
            assert_eq!(holds(source, &customer), expected, "{source}");
        }
    }

    #[test]
    fn every_operator_on_text_and_booleans() {
        let customer = Customer::default().text("stage", "GROWTH").flag("active", true);
        for (source, expected) in [
            (r#"stage = "GROWTH""#, true),
            (r#"stage != "GROWTH""#, false),
            (r#"stage < "H""#, true),
            (r#"stage <= "GROWTH""#, true),
            (r#"stage > "GROWTH""#, false),
            (r#"stage >= "A""#, true),
            ("active", true),
            ("active = true", true),
            ("active == TRUE", true),
            ("active != true", false),
            ("active = false", false),
            ("not active", false),
        ] {
            assert_eq!(holds(source, &customer), expected, "{source}");
        }
    }

    #[test]
    fn lists_test_membership() {
        let customer = Customer::default().text("abc", "B").num("r", 3.0);
        assert!(holds(r#"abc in ["A", "B"]"#, &customer));
        assert!(!holds(r#"abc not in ["A", "B"]"#, &customer));
        assert!(holds(r#"abc not in ["C"]"#, &customer));
        assert!(holds("r in [1, 2, 3]", &customer));
        assert!(!holds("r in [4,5]", &customer));
        assert_eq!(expr("r in [1,2 ,3]").canonical(), "r in [1, 2, 3]");
    }

    #[test]
    fn tags_test_membership() {
        let customer = Customer::default().tag("vip");
        assert!(holds(r#""vip" in tags"#, &customer));
        assert!(!holds(r#""vip" not in tags"#, &customer));
        assert!(holds(r#""churn-risk" not in tags"#, &customer));
        assert!(!holds(r#"not "vip" in tags"#, &customer));
        assert_ne!(expr(r#"not "vip" in tags"#), expr(r#""vip" not in tags"#));
        assert!(expr(r#""vip" in tags"#).reads_tags());
        assert!(!expr("m > 1").reads_tags());
    }

    #[test]
    fn attributes_take_any_kind_and_compare_false_across_kinds() {
        let customer = Customer::default()
            .text("attributes.city", "Lyon")
            .num("attributes.age", 41.0)
            .flag("attributes.vip", true);
        assert!(holds(r#"attributes.city != "Paris""#, &customer));
        assert!(holds(r#"attributes.city in ["Lyon", "Nice"]"#, &customer));
        assert!(holds("attributes.age >= 18", &customer));
        assert!(holds("attributes.vip", &customer));
        assert!(holds("attributes.vip = true", &customer));
        // Another kind than the literal: not equal, not ordered.
        assert!(!holds(r#"attributes.age = "41""#, &customer));
        assert!(holds(r#"attributes.age != "41""#, &customer));
        assert!(!holds("attributes.city > 3", &customer));
        assert!(!holds("attributes.city in [1, 2]", &customer));
        assert!(holds("attributes.city not in [1, 2]", &customer));
        assert!(!holds("attributes.age", &customer));
        assert_eq!(
            expr("attributes.Shoe-Size.eu > 40").canonical(),
            "attributes.Shoe-Size.eu > 40"
        );
    }

    #[test]
    fn absent_is_not_equal_to_anything() {
        let nobody = Customer::default();
        for (source, expected) in [
            ("m = 1", false),
            ("m != 1", true),
            ("m < 1", false),
            ("m <= 1", false),
            ("m > 1", false),
            ("m >= 1", false),
            ("m in [1]", false),
            ("m not in [1]", true),
            ("active", false),
            ("active = false", false),
            ("active != true", true),
            ("attributes.city = \"x\"", false),
            ("attributes.city != \"x\"", true),
        ] {
            assert_eq!(holds(source, &nobody), expected, "{source}");
        }
        let explained = expr("m > 1").explain(&nobody);
        assert_eq!(explained.clauses[0].actual, None);
    }

    #[test]
    fn type_errors_name_their_column() {
        assert_error("m >= ", 6, "expected a value");
        assert_error("stage > 3", 9, "`stage` is text");
        assert_error(r#"m = "x""#, 5, "`m` is a number");
        assert_error(r#""x" in m"#, 8, "expected `tags`");
        assert_error("active < true", 8, "does not apply to booleans");
        assert_error("attributes.vip >= false", 16, "does not apply to booleans");
        assert_error("active = 1", 10, "`active` is a boolean");
        assert_error(r#"m in [1, "2"]"#, 10, "`m` is a number");
        assert_error("stage and m > 1", 7, "expected an operator");
        assert_error("tags", 1, "`tags` is a list of strings");
        assert_error(r#"tags in ["a"]"#, 1, "`tags` is a list of strings");
    }

    #[test]
    fn unknown_fields_suggest_close_names() {
        assert_error(r#"stge = "x""#, 1, "unknown field `stge`; did you mean `stage`?");
        assert_error(r#"Stage = "x""#, 1, "did you mean `stage`?");
        assert_error("m > 1 and monetry > 2", 11, "did you mean `monetary`?");
        assert_error(
            r#"city = "Paris""#,
            1,
            "custom attributes are written `attributes.city`",
        );
        assert_error("attributes = 1", 1, "needs a key");
        assert_error("attributes. = 1", 12, "expected a name after `attributes.`");
    }

    #[test]
    fn syntax_errors_name_their_column() {
        assert_error(r#"stage = "DECL"#, 9, "unterminated string");
        assert_error(r#"stage = "a\n""#, 11, "unknown escape");
        assert_error("m in []", 6, "empty list");
        assert_error(r#"attributes.x in [1, "a"]"#, 21, "mixed list");
        assert_error("m in [1 2]", 9, "expected `,` or `]`");
        assert_error("m in 1", 6, "expected `[`");
        assert_error("m > 1 and", 10, "expected a condition");
        assert_error("or m > 1", 1, "expected a condition");
        assert_error("", 1, "expected a condition");
        assert_error("m > 1 m < 2", 7, "expected `and`, `or` or end of input");
        assert_error("(m > 1", 7, "expected `)` to close the `(` at column 1");
        assert_error("m > 1)", 6, "found `)`");
        assert_error("m ! 1", 3, "`!=`");
        assert_error("m > 1 # x", 7, "unexpected character `#`");
        assert_error("m > 1.", 7, "digits after the decimal point");
        assert_error("m > 12ab", 7, "unexpected `a` in a number");
        assert_error("m > -", 6, "digits after `-`");
        assert_error("m > [1]", 5, "lists go with `in`");
        assert_error(r#""vip" = tags"#, 7, "expected `in tags`");
        let huge = format!("m > {}", "9".repeat(400));
        assert_error(&huge, 5, "out of range");
    }

    #[test]
    fn error_display_names_the_column() {
        assert_eq!(
            error("m >= ").to_string(),
            "at column 6: expected a value, found end of input"
        );
    }

    #[test]
    fn sources_longer_than_the_limit_are_rejected() {
        let long = format!("m > 1{}", " ".repeat(MAX_SOURCE_CHARS));
        assert_error(&long, MAX_SOURCE_CHARS + 1, "longer than 4096");
        let at_limit = format!("m > 1{}", " ".repeat(MAX_SOURCE_CHARS - 5));
        assert!(parse(&at_limit, &catalog()).is_ok());
        // Compact text whose normalised spelling would not fit, so could not round-trip.
        let compact = "m=1 or ".repeat(MAX_SOURCE_CHARS / 7 - 1) + "m=1";
        assert!(compact.len() <= MAX_SOURCE_CHARS);
        assert_error(&compact, 1, "normalised form");
    }

    #[test]
    fn nesting_is_capped_instead_of_overflowing_the_stack() {
        let within = format!(
            "{}m > 1{}",
            "(".repeat(MAX_NESTING_DEPTH),
            ")".repeat(MAX_NESTING_DEPTH)
        );
        assert_eq!(expr(&within), expr("m > 1"));
        let beyond = format!(
            "{}m > 1{}",
            "(".repeat(MAX_NESTING_DEPTH + 1),
            ")".repeat(MAX_NESTING_DEPTH + 1)
        );
        assert_error(&beyond, MAX_NESTING_DEPTH + 1, "nested too deep");
        assert_error(&"not ".repeat(1000), 4 * MAX_NESTING_DEPTH + 1, "nested too deep");

        let ten_thousand = "(".repeat(10_000);
        assert!(parse(&ten_thousand, &catalog()).is_err());
        // Even without the length limit it is the nesting cap that stops it.
        let error = parse_unbounded(&ten_thousand, &catalog()).unwrap_err();
        assert_eq!(error.position, MAX_NESTING_DEPTH + 1);
        let error = parse_unbounded(&format!("{}active", "not ".repeat(10_000)), &catalog()).unwrap_err();
        assert!(error.message.contains("nested too deep"));
    }

    #[test]
    fn examples_round_trip_through_canonical_text() {
        let canonical = [
            r#"rfm.segment in ["champions", "loyal"] and m >= 500 and "vip" in tags"#,
            r#"not (stage = "DECLINE" or stage = "ENDED") and attributes.city != "Paris""#,
            r#"r >= 4 and (f > 2 or monetary > 100000) and attributes.vip = true"#,
            r#""vip" not in tags and abc in ["A", "B"]"#,
        ];
        for (source, expected) in EXAMPLES.iter().zip(canonical) {
            let parsed = expr(source);
            assert_eq!(parsed.canonical(), expected);
            assert_eq!(parsed.to_string(), expected);
            assert_eq!(expr(&parsed.canonical()), parsed);
        }
        let quoted = expr(r#"attributes.note = "say \"hi\" \\ bye""#);
        assert_eq!(quoted.canonical(), r#"attributes.note = "say \"hi\" \\ bye""#);
        assert_eq!(expr(&quoted.canonical()), quoted);
    }

    #[test]
    fn explain_lists_every_clause_with_the_value_seen() {
        let customer = Customer::default()
            .text("rfm.segment", "loyal")
            .num("m", 420.0)
            .tag("vip");
        let explained = expr(EXAMPLES[0]).explain(&customer);
        assert_eq!(
            explained,
            Explanation {
                matched: false,
                clauses: vec![
                    ClauseOutcome {
                        clause: r#"rfm.segment in ["champions", "loyal"]"#.to_owned(),
                        matched: true,
                        actual: Some(r#""loyal""#.to_owned()),
                    },
                    ClauseOutcome {
                        clause: "m >= 500".to_owned(),
                        matched: false,
                        actual: Some("420".to_owned())
                    },
                    ClauseOutcome {
                        clause: r#""vip" in tags"#.to_owned(),
                        matched: true,
                        actual: Some("present".to_owned()),
                    },
                ],
            }
        );
        let big_spender = Customer::default()
            .text("rfm.segment", "champions")
            .num("m", 500.0)
            .tag("vip");
        assert!(expr(EXAMPLES[0]).explain(&big_spender).matched);
    }

    #[test]
    fn fields_lists_the_fixed_fields_read() {
        assert_eq!(expr(EXAMPLES[0]).fields(), ["rfm.segment", "m"]);
        assert_eq!(expr(EXAMPLES[2]).fields(), ["r", "f", "monetary"]);
        assert_eq!(expr(EXAMPLES[1]).fields(), ["stage"]);
        assert_eq!(expr(EXAMPLES[1]).attribute_fields(), ["attributes.city"]);
        assert!(expr(EXAMPLES[0]).attribute_fields().is_empty());
    }

    #[test]
    fn catalog_ignores_names_that_cannot_be_written() {
        let catalog = FieldCatalog::new(&[
            ("tags", FieldType::Number),
            ("attributes.x", FieldType::Number),
            ("And", FieldType::Bool),
            ("in", FieldType::Bool),
            ("Upper", FieldType::Bool),
            ("ok.Key-1", FieldType::Bool),
        ]);
        assert_eq!(catalog.field_type("tags"), None);
        assert_eq!(catalog.field_type("attributes.x"), None);
        assert_eq!(catalog.field_type("in"), None);
        assert_eq!(catalog.field_type("Upper"), None);
        assert_eq!(catalog.field_type("ok.Key-1"), Some(FieldType::Bool));
        assert!(parse("ok.Key-1", &catalog).is_ok());
    }

    /// A tiny deterministic generator, so the randomized test needs no crate and is repeatable.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    #[test]
    fn arbitrary_input_never_panics_and_accepted_input_round_trips() {
        const PIECES: [&str; 48] = [
            "(",
            ")",
            "[",
            "]",
            ",",
            "\"",
            "\\",
            "=",
            "==",
            "!=",
            "!",
            "<",
            "<=",
            ">",
            ">=",
            "-",
            ".",
            " ",
            " ",
            " and ",
            " OR ",
            "not ",
            " in ",
            "true",
            "False",
            "tags",
            "m",
            "stage",
            "active",
            "attributes.x",
            "attributes.",
            "rfm.segment",
            "1",
            "2.5",
            "-7",
            "\"vip\"",
            "\"a\\\"b\"",
            "é",
            "#",
            "0",
            "9",
            "x",
            "_",
            "\t",
            "\n",
            "in",
            "\"",
            "AnD",
        ];
        let catalog = catalog();
        let customer = Customer::default()
            .num("m", 2.5)
            .text("stage", "vip")
            .tag("vip")
            .flag("active", true);
        let mut random = Lcg(0x5eed);
        let mut accepted = 0;
        for _ in 0..30_000 {
            let pieces = random.below(24);
            let source: String = (0..pieces).map(|_| PIECES[random.below(PIECES.len())]).collect();
            let parsed = parse(&source, &catalog);
            match parsed {
                Ok(parsed) => {
                    accepted += 1;
                    let canonical = parsed.canonical();
                    let reparsed = parse(&canonical, &catalog)
                        .unwrap_or_else(|error| panic!("{source:?} -> {canonical:?}: {error}"));
                    assert_eq!(reparsed, parsed, "{source:?} -> {canonical:?}");
                    assert_eq!(reparsed.canonical(), canonical);
                    assert_eq!(parsed.explain(&customer).matched, parsed.matches(&customer));
                }
                Err(error) => {
                    let columns = source.chars().count() + 1;
                    assert!((1..=columns).contains(&error.position), "{source:?}: {error}");
                }
            }
        }

        // Mostly well-formed sources built from clauses, some with one character mutated, so
        // the round trip is exercised on many accepted shapes and the errors near them.
        const CLAUSES: [&str; 8] = [
            "m > 1",
            "stage = \"x\"",
            "active",
            "\"vip\" in tags",
            "\"vip\" not in tags",
            "attributes.x != -2.5",
            "m not in [1, 2.5]",
            "rfm.segment in [\"a\\\\\", \"b\"]",
        ];
        const CONNECTIVES: [&str; 3] = [" and ", " or ", " AND NOT "];
        for _ in 0..20_000 {
            let mut source = String::new();
            let mut open_parens = 0;
            for clause in 0..=random.below(6) {
                if clause > 0 {
                    source.push_str(CONNECTIVES[random.below(CONNECTIVES.len())]);
                }
                match random.below(4) {
                    0 => {
                        source.push('(');
                        open_parens += 1;
                    }
                    1 => source.push_str("not "),
                    _ => {}
                }
                source.push_str(CLAUSES[random.below(CLAUSES.len())]);
                if open_parens > 0 && random.below(2) == 0 {
                    source.push(')');
                    open_parens -= 1;
                }
            }
            source.push_str(&")".repeat(open_parens));
            if random.below(3) == 0 {
                let mut chars: Vec<char> = source.chars().collect();
                let at = random.below(chars.len() + 1);
                let piece = PIECES[random.below(PIECES.len())];
                if random.below(2) == 0 && at < chars.len() {
                    chars.remove(at);
                } else {
                    chars.splice(at..at, piece.chars());
                }
                source = chars.into_iter().collect();
            }
            if let Ok(parsed) = parse(&source, &catalog) {
                accepted += 1;
                let canonical = parsed.canonical();
                assert_eq!(
                    parse(&canonical, &catalog).as_ref(),
                    Ok(&parsed),
                    "{source:?} -> {canonical:?}"
                );
                assert_eq!(parsed.explain(&customer).matched, parsed.matches(&customer));
            }
        }
        assert!(accepted > 10_000, "only {accepted} random sources parsed");

        // Raw characters, including ones outside the token alphabet.
        for _ in 0..5_000 {
            let length = random.below(40);
            let source: String = (0..length)
                .map(|_| char::from_u32(random.below(0x3000) as u32).unwrap_or('?'))
                .collect();
            let _ = parse(&source, &catalog);
        }
    }
}
