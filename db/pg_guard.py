"""The PostgreSQL statement guard of `rtgrid query`: the server's own parser (libpg_query, through
`pglast`) and an ALLOW-LIST of statements, node types, functions, types and relations.

Why an allow-list over a parse tree: the URL's role is often a superuser, and a READ ONLY transaction
still runs functions with side effects (pg_terminate_backend, pg_read_file, lo_import, set_config,
pg_advisory_lock, query_to_xml('…') which runs SQL from a string). A deny-list over a hand-made lexer
missed a call inside ARRAY[...], a `--` comment ended by a carriage return and SQL-running built-ins;
the parser reads the text exactly as the server will, and anything not named here is refused.

Scope: exactly one SELECT / VALUES / TABLE / WITH … SELECT (or EXPLAIN of one); relations are rtgrid's
own tables and views and the statement's CTEs (scoped as PostgreSQL scopes them). Not the catalogs, nor
information_schema: pg_authid, pg_stat_activity and user_mapping_options hold secrets.
A refusal is a one-line ReadOnlyViolation. The strongest protection is still a read-only role (README).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError, parse_sql_json

from db.errors import ReadOnlyViolation

ALLOW_LIST_FIX = ("rtgrid query reads rtgrid's tables with aggregate, math, string, date, JSON, array and "
                  "window functions only; for anything else use psql as a read-only role (README)")

# Statements that only read (their inner query is checked node by node).
ALLOWED_STATEMENTS = frozenset({"SelectStmt", "ExplainStmt"})

# Parse-tree node types that only compute or read (FuncCall, RangeVar and TypeName are checked further).
ALLOWED_NODES = frozenset({
    "RawStmt", "SelectStmt", "ExplainStmt", "DefElem", "ResTarget", "ColumnRef", "A_Star", "A_Const",
    "Integer", "Float", "Boolean", "String", "BitString", "A_Expr", "BoolExpr", "NullTest", "BooleanTest",
    "CaseExpr", "CaseWhen", "CoalesceExpr", "MinMaxExpr", "NullIfExpr", "SubLink", "A_ArrayExpr", "A_Indices",
    "A_Indirection", "RowExpr", "TypeCast", "TypeName", "CollateClause", "FuncCall", "SQLValueFunction",
    "GroupingFunc", "GroupingSet", "SortBy", "WindowDef", "RangeVar", "RangeSubselect", "RangeFunction",
    "JoinExpr", "Alias", "WithClause", "CommonTableExpr", "CTESearchClause", "CTECycleClause",
})

# Functions by name (unqualified or pg_catalog.): none reads files, signals, locks, sets config or runs SQL text.
_AGGREGATES = """count sum avg min max stddev stddev_pop stddev_samp variance var_pop var_samp bool_and bool_or
    every string_agg array_agg json_agg jsonb_agg json_object_agg jsonb_object_agg percentile_cont percentile_disc
    mode corr covar_pop covar_samp regr_slope regr_intercept regr_r2 regr_count regr_avgx regr_avgy regr_sxx
    regr_syy regr_sxy bit_and bit_or bit_xor any_value"""
_WINDOW = "row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value"
_MATH = """abs ceil ceiling floor round trunc sign sqrt cbrt exp ln log log10 power pow mod div pi degrees radians
    sin cos tan asin acos atan atan2 sinh cosh tanh width_bucket random scale gcd lcm factorial num_nulls
    num_nonnulls isfinite int2 int4 int8 float4 float8 numeric"""
_STRING = """lower upper length char_length character_length octet_length bit_length substr substring left right
    lpad rpad btrim ltrim rtrim replace concat concat_ws split_part position strpos starts_with format initcap
    repeat reverse md5 regexp_replace regexp_match regexp_matches regexp_split_to_array regexp_split_to_table
    regexp_like regexp_count regexp_substr regexp_instr translate to_char to_number to_hex text overlay
    string_to_array array_to_string string_to_table normalize similar_to_escape"""
_DATE = """now current_timestamp clock_timestamp statement_timestamp transaction_timestamp date_trunc date_part
    extract age make_date make_time make_timestamp make_timestamptz make_interval to_date to_timestamp date_bin
    justify_days justify_hours justify_interval timezone overlaps"""
_JSON = """to_json to_jsonb json_build_object jsonb_build_object json_build_array jsonb_build_array json_object
    jsonb_object json_extract_path json_extract_path_text jsonb_extract_path jsonb_extract_path_text
    json_array_elements json_array_elements_text jsonb_array_elements jsonb_array_elements_text json_each
    json_each_text jsonb_each jsonb_each_text json_object_keys jsonb_object_keys json_typeof jsonb_typeof
    json_array_length jsonb_array_length jsonb_pretty jsonb_strip_nulls json_strip_nulls row_to_json
    array_to_json"""
_ARRAYS = """unnest generate_series array_length cardinality array_position array_positions array_append
    array_prepend array_cat array_remove array_replace array_lower array_upper array_dims"""
ALLOWED_FUNCTIONS = frozenset(" ".join((_AGGREGATES, _WINDOW, _MATH, _STRING, _DATE, _JSON, _ARRAYS)).split())

# Operators (unqualified or pg_catalog.): an operator is a function call, and one in another schema could be anyone's.
ALLOWED_OPERATORS = frozenset("""+ - * / % ^ |/ ||/ @ & | # ~ << >> = <> != < > <= >= || ~~ !~~ ~~* !~~* ~ ~* !~ !~*
    @> <@ && -> ->> #> #>> ? ?| ?& @? @@ - BETWEEN NOT_BETWEEN BETWEEN_SYMMETRIC NOT_BETWEEN_SYMMETRIC""".split())

# Cast targets (a cast runs the type's input function: only plain value types).
ALLOWED_TYPES = frozenset("""int2 int4 int8 smallint integer int bigint float4 float8 real numeric decimal bool
    boolean text varchar bpchar char name date timestamp timestamptz time timetz interval json jsonb uuid
    bytea""".split())

# Relations a query may name besides its CTEs: rtgrid's tables and views (`rtgrid query --schema`).
_SCHEMAS = (None, "public")
_CATALOG_SCHEMAS = (None, "pg_catalog")

# Friendlier names for the refusals users meet most.
_NODE_WORDS = {"IntoClause": "SELECT … INTO", "LockingClause": "FOR UPDATE / FOR SHARE",
               "ParamRef": "$n parameters", "RangeTableSample": "TABLESAMPLE"}


def _statement_word(name: str) -> str:
    words = {"InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE",
             "VariableSetStmt": "SET", "VariableShowStmt": "SHOW", "TransactionStmt": "transaction",
             "CopyStmt": "COPY", "DoStmt": "DO", "CallStmt": "CALL", "LockStmt": "LOCK"}
    return words.get(name, name.removesuffix("Stmt").upper())


def _refuse(what: str) -> ReadOnlyViolation:
    return ReadOnlyViolation(f"query refused: {what} is not allowed; {ALLOW_LIST_FIX}")


def _strings(values: Iterable[Any] | None) -> list[str]:
    return [str(value.sval) for value in values or () if isinstance(value, ast.String)]


def parse_one(sql: str) -> ast.RawStmt:
    """The one statement of `sql`, parsed as the server parses it; ReadOnlyViolation otherwise."""
    try:
        parse_sql_json(sql)  # refuses a too-deep tree with an error where building Python nodes could crash
        statements = parse_sql(sql)
    except ParseError as exc:
        raise ReadOnlyViolation(f"query refused: {str(exc).splitlines()[0]} (PostgreSQL syntax)") from None
    if not statements:
        raise ReadOnlyViolation("query refused: no SQL statement given")
    if len(statements) > 1:
        raise ReadOnlyViolation(f"query refused: exactly one statement allowed, got {len(statements)}")
    statement: ast.RawStmt = statements[0]
    return statement


def check_statement(sql: str, relations: Iterable[str]) -> str:
    """`sql` if it is one statement made only of allowed parts; one-line ReadOnlyViolation otherwise.

    `relations`: the table and view names the query may read (rtgrid's schema)."""
    raw = parse_one(sql)
    kind = type(raw.stmt).__name__
    if kind not in ALLOWED_STATEMENTS:
        raise ReadOnlyViolation(f"query refused: rtgrid query is read-only ({_statement_word(kind)} statements are "
                                "not allowed; use SELECT / WITH / VALUES / TABLE / EXPLAIN)")
    try:
        _Checker(frozenset(relations)).visit(raw, frozenset())
    except RecursionError:
        raise ReadOnlyViolation("query refused: the statement is nested too deeply to check; simplify it "
                                "(e.g. a CTE instead of nested subqueries)") from None
    return sql


class _Checker:
    """Walks a parse tree; every node must be allowed, with CTE names in scope as PostgreSQL scopes them."""

    def __init__(self, relations: frozenset[str]) -> None:
        self.relations = relations

    def visit(self, node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, (list, tuple)):
            for item in node:
                self.visit(item, ctes)
            return
        if not isinstance(node, ast.Node):
            return  # a scalar field (a name, a flag, an enum)
        name = type(node).__name__
        if name not in ALLOWED_NODES:
            raise _refuse(_NODE_WORDS.get(name, f"{name} ({_statement_word(name)})"))
        check = getattr(self, f"_check_{name}", None)
        if check is not None:
            check(node, ctes)
        if isinstance(node, ast.SelectStmt) and node.withClause is not None:
            self._visit_with(node, node.withClause, ctes)
            return
        for child in self._children(node):
            self.visit(child, ctes)

    @staticmethod
    def _children(node: ast.Node, skip: tuple[str, ...] = ()) -> Iterator[Any]:
        for field in getattr(node, "__slots__", ()):
            if field not in skip:
                yield getattr(node, field, None)

    def _visit_with(self, select: ast.SelectStmt, clause: ast.WithClause, outer: frozenset[str]) -> None:
        """A WITH list: a CTE sees the earlier ones (all of them when RECURSIVE); the body sees all."""
        ctes = list(clause.ctes or ())
        names = [cte.ctename for cte in ctes]
        for i, cte in enumerate(ctes):
            visible = outer | frozenset(names if clause.recursive else names[:i])
            self.visit(cte, visible)
        for child in self._children(select, skip=("withClause",)):
            self.visit(child, outer | frozenset(names))

    def _check_ExplainStmt(self, node: ast.ExplainStmt, _ctes: frozenset[str]) -> None:
        if type(node.query).__name__ != "SelectStmt":
            raise ReadOnlyViolation("query refused: rtgrid query is read-only (EXPLAIN of "
                                    f"{_statement_word(type(node.query).__name__)} is not allowed)")

    def _check_FuncCall(self, node: ast.FuncCall, _ctes: frozenset[str]) -> None:
        parts = _strings(node.funcname)
        schema, function = (parts[0] if len(parts) > 1 else None), parts[-1].lower()
        if schema not in _CATALOG_SCHEMAS or function not in ALLOWED_FUNCTIONS:
            raise _refuse(f"function {'.'.join(parts)}()")

    def _check_A_Expr(self, node: ast.A_Expr, _ctes: frozenset[str]) -> None:
        parts = _strings(node.name)
        schema, operator = (parts[0] if len(parts) > 1 else None), (parts[-1] if parts else "")
        if schema not in _CATALOG_SCHEMAS or operator.replace(" ", "_") not in ALLOWED_OPERATORS:
            raise _refuse(f"operator {'.'.join(parts)}")

    def _check_TypeName(self, node: ast.TypeName, _ctes: frozenset[str]) -> None:
        parts = _strings(node.names)
        schema, name = (parts[0] if len(parts) > 1 else None), (parts[-1].lower() if parts else "")
        if schema not in _CATALOG_SCHEMAS or name not in ALLOWED_TYPES or node.pct_type:
            raise _refuse(f"type {'.'.join(parts)}")

    def _check_RangeVar(self, node: ast.RangeVar, ctes: frozenset[str]) -> None:
        schema, relation = node.schemaname, node.relname
        if node.catalogname is None and schema is None and relation in ctes:
            return
        if node.catalogname is None and schema in _SCHEMAS and relation in self.relations:
            return
        shown = ".".join(p for p in (node.catalogname, schema, relation) if p)
        raise _refuse(f"reading {shown}")

    def _check_DefElem(self, node: ast.DefElem, _ctes: frozenset[str]) -> None:
        # only as an EXPLAIN option (ANALYZE, VERBOSE, FORMAT, …): its argument is a plain value
        if node.arg is not None and type(node.arg).__name__ not in ("String", "Integer", "Boolean", "Float"):
            raise _refuse(f"EXPLAIN option {node.defname}")
