"""
    Greeting

A local package of the example pool project (`examples/project`): loaded once
per worker (list it in `preload` to load it before the worker is ready), and
used by `examples/project/greet.jl`.
"""
module Greeting

export greet

"""`greet(name)`: the greeting, HTML-escaped."""
greet(name::AbstractString) = "Hello, " * escape_html(isempty(name) ? "world" : name) * "!"

function escape_html(s::AbstractString)
    return replace(replace(replace(replace(s, "&" => "&amp;"), "<" => "&lt;"), ">" => "&gt;"),
                   "\"" => "&quot;")
end

# What a package would compute once when it is loaded (and what a system
# image can hold precompiled).
const LOADED_AT = Ref(0.0)
__init__() = (LOADED_AT[] = time())

end # module Greeting
