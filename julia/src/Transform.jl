"""
    Transform

Static analysis of a parsed page, deciding how it is run:

* **handler** — the top level defines `handle`: run the top level once, then
  only `handle()` per request.
* **compiled** — a CGI page whose top level can safely become the body of one
  function `__page_main__()`, compiled once: `using`/`import`/`export`,
  `struct`, `abstract type`, `primitive type`, `macro`, `module`, top-level
  `include(…)`, function definitions and `const`s with an immutable literal
  value are *hoisted* to module level (evaluated once); every other statement
  goes, in order, into `__page_main__`, where the page's variables become
  locals.
* **fallback** — anything that makes that unsafe: the cached parsed
  statements are evaluated one by one, per request, in a fresh module.

This module only looks at syntax (`plan`, `free_symbols`, `assigned`); the
checks that need the evaluated hoisted part (`Pages`) use them.
"""
module Transform

# Run at load time or on rare paths: compile fast rather than optimize
# (about a second less CPU before READY).
Base.Experimental.@optlevel 1

"""One top-level statement with the source line it starts at."""
struct Stmt
    line::LineNumberNode
    ex::Any
end

"""How a page will run; `reason` says why it falls back (for the log)."""
struct Plan
    kind::Symbol               # :handler, :compiled or :fallback
    stmts::Vector{Stmt}        # every statement, in order (handler, fallback)
    hoisted::Vector{Stmt}      # module-level part (compiled)
    main::Vector{Stmt}         # body of __page_main__ (compiled)
    reason::String
end

const MAIN_NAME = :__page_main__

# ------------------------------------------------------------ statements

"""
    statements(parsed) -> Vector{Stmt}

Flatten a parsed file (`Expr(:toplevel, …)`, top-level `begin` blocks) into
statements, each with its line. `begin … end` at top level opens no scope,
so flattening it changes nothing.
"""
function statements(parsed)::Vector{Stmt}
    out = Stmt[]
    flatten!(out, parsed, LineNumberNode(0, :none))
    return out
end

function flatten!(out::Vector{Stmt}, ex, line::LineNumberNode)
    if ex isa Expr && (ex.head === :toplevel || ex.head === :block)
        for a in ex.args
            if a isa LineNumberNode
                line = a
            else
                line = flatten!(out, a, line)
            end
        end
    elseif !(ex isa LineNumberNode) && ex !== nothing
        push!(out, Stmt(line, ex))
    end
    return line
end

"""`Expr(:toplevel, line, ex)`: what `Core.eval` gets, so errors and
backtraces point at the page's file and line."""
toplevel(s::Stmt) = Expr(:toplevel, s.line, s.ex)

# ------------------------------------------------------------ predicates

macro_name(m) = m isa Symbol ? String(m) :
                m isa GlobalRef ? String(m.name) :
                (m isa Expr && m.head === :. && m.args[end] isa QuoteNode) ?
                    String(m.args[end].value::Symbol) : ""

"""The function name a definition signature defines (`nothing` if none)."""
function fn_name(sig)
    sig isa Symbol && return sig
    sig isa Expr || return nothing
    if sig.head === :where || (sig.head === :(::) && length(sig.args) == 2 &&
                               sig.args[1] isa Expr)
        return fn_name(sig.args[1])
    elseif sig.head === :call
        return sig.args[1]
    end
    return nothing
end

"""Is `ex` a named function definition (`function f(…)`, `f(…) = …`)?"""
function is_funcdef(ex)::Bool
    ex isa Expr || return false
    if ex.head === :function
        sig = ex.args[1]
        return sig isa Symbol || (sig isa Expr && sig.head !== :tuple &&
                                  fn_name(sig) !== nothing)
    elseif ex.head === :(=)
        lhs = ex.args[1]
        lhs isa Expr || return false
        return lhs.head === :call || lhs.head === :where ||
               (lhs.head === :(::) && lhs.args[1] isa Expr && lhs.args[1].head === :call)
    end
    return false
end

const DEFINING_MACROS = ("@enum", "@kwdef", "@doc", "@generated", "@inline",
                         "@noinline", "@nospecialize")
const TYPE_HEADS = (:struct, :abstract, :primitive, :macro)

"""A definition that belongs at module level (possibly wrapped in a macro)."""
function is_definition(ex)::Bool
    is_funcdef(ex) && return true
    ex isa Expr || return false
    ex.head in TYPE_HEADS && return true
    if ex.head === :macrocall
        macro_name(ex.args[1]) in DEFINING_MACROS && return true
        return any(is_definition, ex.args[2:end])
    end
    return false
end

"""Does this top-level statement define `handle`?"""
function defines_handle(ex)::Bool
    ex isa Expr || return false
    is_funcdef(ex) && return fn_name(ex.args[1]) === :handle
    ex.head === :(=) && return ex.args[1] === :handle
    ex.head === :const && return defines_handle(ex.args[1])
    ex.head === :macrocall && return any(defines_handle, ex.args[2:end])
    return false
end

"""Immutable literal values (`const` with such a value is hoisted)."""
function is_literal(ex)::Bool
    (ex isa Number || ex isa AbstractString || ex isa Char || ex isa QuoteNode) &&
        return true
    ex === :nothing && return true
    ex isa Expr || return false
    ex.head === :tuple && return all(is_literal, ex.args)
    ex.head === :macrocall && macro_name(ex.args[1]) in ("@r_str", "@raw_str") &&
        return all(a -> a isa LineNumberNode || a isa String, ex.args[2:end])
    return false
end

is_include_stmt(ex) = ex isa Expr && ex.head === :call && ex.args[1] === :include

const HOISTED_HEADS = (:using, :import, :export, :public, :struct, :abstract, :primitive,
                       :macro, :module)
const UNSAFE_SYMBOLS = (:eval, :include_string, :evalfile, Symbol("@eval"),
                        Symbol("@everywhere"))

"""Where statement `ex` goes: `:hoist`, `:const_main` (a `const` with a
computed value: its assignment runs per request) or `:main`."""
function classify(ex)::Symbol
    ex isa Expr || return :main
    (ex.head in HOISTED_HEADS || is_definition(ex) || is_include_stmt(ex)) && return :hoist
    if ex.head === :const
        a = ex.args[1]
        return (a isa Expr && a.head === :(=) && is_literal(a.args[2])) ? :hoist : :const_main
    end
    return :main
end

"""
    unsafe_reason(ex, in_main=false) -> String

Why `ex` rules out the compiled form ("" if nothing does): `global`, `eval`
and friends anywhere; `include` anywhere but a top-level statement; inside
the main part, anything that only exists at top level (`using`, `struct`, …)
or a named function definition (it would become a closure).
"""
function unsafe_reason(ex, in_main::Bool=false)::String
    if ex isa Symbol
        ex in UNSAFE_SYMBOLS && return "uses $(ex)"
        ex === :include && return "calls include() below top level"
        return ""
    end
    ex isa Expr || return ""
    ex.head === :global && return "uses global"
    ex.head === :quote && return ""
    if in_main
        ex.head in HOISTED_HEADS && return "has $(ex.head) below top level"
        ex.head in (:const, :toplevel, :method) && return "has $(ex.head) below top level"
        is_funcdef(ex) && return "defines a named function below top level"
    end
    for a in ex.args
        r = unsafe_reason(a, in_main)
        isempty(r) || return r
    end
    return ""
end

# ------------------------------------------------------------ the plan

"""
    plan(stmts) -> Plan

Decide statically how the page runs. A `:compiled` plan is still only a
candidate: `Pages` evaluates the hoisted part and checks it with
[`conflicts`](@ref) before compiling `__page_main__`.
"""
function plan(stmts::Vector{Stmt})::Plan
    any(s -> defines_handle(s.ex), stmts) &&
        return Plan(:handler, stmts, Stmt[], Stmt[], "")
    hoisted = Stmt[]
    main = Stmt[]
    for s in stmts
        ex = s.ex
        ex isa Expr && ex.head === :local && return fallback(stmts, "uses local at top level")
        k = classify(ex)
        if k === :hoist
            r = unsafe_reason(is_include_stmt(ex) ? Expr(:tuple, ex.args[2:end]...) : ex)
            isempty(r) || return fallback(stmts, r)
            push!(hoisted, s)
        else
            body = k === :const_main ? ex.args[1] : ex
            r = unsafe_reason(body, true)
            isempty(r) || return fallback(stmts, r)
            push!(main, Stmt(s.line, body))
        end
    end
    return Plan(:compiled, stmts, hoisted, main, "")
end

fallback(stmts, reason) = Plan(:fallback, stmts, Stmt[], Stmt[], reason)

"""The body of `__page_main__()`: the main part at its lines, then `return nothing`."""
function main_body(main::Vector{Stmt})::Expr
    body = Expr(:block)
    for s in main
        push!(body.args, s.line, s.ex)
    end
    push!(body.args, :(return nothing))
    return body
end

"""The definition of `__page_main__()` for a compiled plan's main part."""
main_function(main::Vector{Stmt})::Expr = Expr(:function, Expr(:call, MAIN_NAME), main_body(main))

"""
The same main part as one top-level `let` block: a hard local scope like the
function's body (its variables are locals, `return` ends it), which julia
evaluates in its interpreter when it has no loop (see `Loader.first_run`).
"""
main_let(main::Vector{Stmt})::Expr = Expr(:let, Expr(:block), main_body(main))

include("Scope.jl")

end # module Transform
