"""
    Warmup

Before the worker says READY it sends itself real FastCGI requests over a
socketpair, through the same connection code real requests take: a CGI page
(loaded, then cached; GET and POST), a handler page, a page that falls back
to per-request evaluation, a page without headers, a throwing page, a syntax
error, a 403, a 404, GET_VALUES. That compiles the request loop, so the
first real request does not pay for it. The temporary pages are removed
afterwards and nothing of this reaches a real response or the log.
"""
module Warmup

# Run at load time or on rare paths: compile fast rather than optimize
# (about a second less CPU before READY).
Base.Experimental.@optlevel 1

using ..Posix
using ..Log
using ..FastCGI
using ..FastCGI: ByteBuf
using ..Config
using ..Config: Settings
using ..Server
using ..Output
using ..Access

const CGI_PAGE = """
const GREETING = "warm"
struct WarmPoint
    x::Int
    y::Int
end
norm1(p::WarmPoint) = abs(p.x) + abs(p.y)
println("Content-Type: text/plain")
println("Status: 200 OK")
println()
q = get(ENV, "QUERY_STRING", "")
body = read(stdin, String)
total = 0
for i in 1:3
    total += i
end
println(GREETING, " ", q, " ", length(body), " ", total, " ", norm1(WarmPoint(1, -2)))
atexit(() -> println("bye"))
"""

const HANDLER_PAGE = """
const COUNT = Ref(0)
function handle()
    COUNT[] += 1
    print("Content-Type: text/plain\\r\\n\\r\\nhandled ", COUNT[], " ", length(read(stdin)))
end
"""

const FALLBACK_PAGE = """
counter = 0
bump() = global counter += 1
bump()
println("Content-Type: text/html\\n\\n<p>", counter, "</p>")
"""

const NOHEADER_PAGE = "print(\"just a body\")\n"
const THROWING_PAGE = "println(\"Content-Type: text/plain\\n\")\nerror(\"warm-up exception\")\n"
const SYNTAX_PAGE = "x = (\n"

function params(path::String, method::String="GET", query::String="", body::String="")
    return ["GATEWAY_INTERFACE" => "CGI/1.1", "SERVER_SOFTWARE" => "julia-fcgi-warmup",
            "REQUEST_METHOD" => method, "QUERY_STRING" => query,
            "REQUEST_URI" => "/" * basename(path) * (isempty(query) ? "" : "?" * query),
            "SCRIPT_FILENAME" => path, "SCRIPT_NAME" => "/" * basename(path),
            "DOCUMENT_ROOT" => dirname(path), "SERVER_PROTOCOL" => "HTTP/1.1",
            "REMOTE_ADDR" => "127.0.0.1", "REMOTE_PORT" => "40000",
            "SERVER_NAME" => "localhost", "SERVER_PORT" => "80",
            "CONTENT_TYPE" => isempty(body) ? "" : "application/x-www-form-urlencoded",
            "CONTENT_LENGTH" => string(sizeof(body)), "HTTP_HOST" => "localhost"]
end

"""The pages to write and the requests to send (path, method, query, body)."""
function script(dir::String, ext::String)
    pages = Dict("cgi" => CGI_PAGE, "handler" => HANDLER_PAGE, "fallback" => FALLBACK_PAGE,
                 "noheader" => NOHEADER_PAGE, "throws" => THROWING_PAGE,
                 "syntax" => SYNTAX_PAGE)
    p(name) = joinpath(dir, name * ext)
    reqs = [(p("cgi"), "GET", "a=1", ""), (p("cgi"), "POST", "", "x=1&y=2"),
            (p("cgi"), "GET", "b=2", ""), (p("handler"), "GET", "", ""),
            (p("handler"), "POST", "", "data"), (p("fallback"), "GET", "", ""),
            (p("noheader"), "GET", "", ""), (p("throws"), "GET", "", ""),
            (p("syntax"), "GET", "", ""), (p("missing"), "GET", "", ""),
            (joinpath(dir, "denied.warmup-denied"), "GET", "", "")]
    return pages, p, reqs
end

"""
    run!(settings)

Warm the worker up (see the module docs). Failures are logged as a warning
and never stop the worker from starting: warm-up only saves time.
"""
function run!(settings::Settings)
    home = Server.Pages.current_dir()    # where the worker runs ("/" under the master)
    dir = mktempdir()
    try
        # Same code paths, but pages from the temp dir must be servable, and
        # synthetic requests are no one's access log (the entry's formatting
        # is compiled below instead).
        s = Config.with(settings; doc_roots=String[], access_log=false)
        pages, path, reqs = script(realpath(dir), first(settings.extensions))
        for (name, text) in pages
            write(path(name), text)
        end
        w = Server.Worker(s, -1; scoreboard=false)     # never accepts
        n = Log.quietly(() -> exchange(w, reqs))
        if settings.access_log        # compile the entry's path, send nothing
            Output.status_code(w.resp)
            Access.line("GET", "/", 200, 0, "127.0.0.1")
        end
        Server.Pages.idle!(w.rt)
        n == length(reqs) || Log.warn("warm-up: $n of $(length(reqs)) requests answered")
    catch e
        Log.warn("warm-up failed (the first requests will be slower): " *
                 sprint(showerror, e, catch_backtrace()))
    finally
        # The warm-up's pages ran in `dir`, and their requests cd'ed there:
        # back to where the worker was before it goes, so that the worker
        # never waits in a deleted directory.
        isempty(home) || try
            cd(home)
        catch e
            Log.debug("warm-up: cannot go back to $(repr(home)): " * sprint(showerror, e))
        end
        rm(dir; recursive=true, force=true)
    end
    return nothing
end

"""Send the requests (and a GET_VALUES) on one connection; returns the
number of END_REQUEST records that came back."""
function exchange(w::Server.Worker, reqs)::Int
    b = ByteBuf(16 * 1024)
    FastCGI.put_header!(b, FastCGI.GET_VALUES, 0, 0, 0)
    for (i, (path, method, query, body)) in enumerate(reqs)
        FastCGI.put_request!(b, i, params(path, method, query, body), body)
    end
    client, server = Posix.socketpair()
    client < 0 && error("socketpair: " * Posix.strerror(-client))
    try
        Posix.write_all(client, b.data, b.len) == 0 || error("cannot write warm-up requests")
        Posix.shutdown_write(client)
        Server.serve_connection!(w, server)       # closes `server`
        return count_ends(client)
    finally
        Posix.closefd(client)
    end
end

function count_ends(fd::Cint)::Int
    buf = Vector{UInt8}(undef, 64 * 1024)
    all = UInt8[]
    while (n = Posix.read_some(fd, buf, 0, length(buf))) > 0
        append!(all, view(buf, 1:n))
    end
    recs, _ = FastCGI.decode_records(all)
    return count(r -> r.type == FastCGI.END_REQUEST, recs)
end

end # module Warmup
