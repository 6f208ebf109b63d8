# The worker's request loop alone: one Julia process serves N requests of a
# page through the worker's real connection code, each on a new socketpair
# (no listener, no nginx, no master), and prints the time and the bytes
# allocated per request. For comparing two builds of the same worker where
# nothing else differs, e.g. the pool sysimage against source:
#
#   julia --startup-file=no bench/worker_loop.jl [PAGE] [N]
#   julia --startup-file=no -J target/sysimage/sysimage.so bench/worker_loop.jl [PAGE] [N]
#
# PAGE is bench/pages/post.jl (POST 4 KiB, 64 KiB answered) unless given;
# any other page is asked for with GET. N = 20000 requests per round, 3
# rounds after 2000 warm-up requests. On an image that holds the worker, the
# image's JuliaFCGI is what runs (as worker.jl does).
isdefined(Main, :JuliaFCGI) || include(joinpath(@__DIR__, "..", "julia", "src", "JuliaFCGI.jl"))
using .JuliaFCGI: Log, Control, Posix, Config, Server, Stdio, Warmup, FastCGI

const PAGE = abspath(get(ARGS, 1, joinpath(@__DIR__, "pages", "post.jl")))
const N = parse(Int, get(ARGS, 2, "20000"))
const POST = basename(PAGE) == "post.jl"

"""The request nginx sends for the page (params and, for POST, the body)."""
function request_bytes()::Vector{UInt8}
    params = ["QUERY_STRING" => "", "REQUEST_METHOD" => POST ? "POST" : "GET",
              "CONTENT_TYPE" => POST ? "application/octet-stream" : "",
              "CONTENT_LENGTH" => POST ? "4096" : "", "SCRIPT_NAME" => "/page.jl",
              "REQUEST_URI" => "/page.jl", "DOCUMENT_URI" => "/page.jl",
              "DOCUMENT_ROOT" => dirname(PAGE), "SERVER_PROTOCOL" => "HTTP/1.1",
              "REQUEST_SCHEME" => "http", "GATEWAY_INTERFACE" => "CGI/1.1",
              "SERVER_SOFTWARE" => "nginx/1.22.1", "REMOTE_ADDR" => "127.0.0.1",
              "REMOTE_PORT" => "51234", "SERVER_ADDR" => "127.0.0.1", "SERVER_PORT" => "80",
              "SERVER_NAME" => "localhost", "REDIRECT_STATUS" => "200",
              "SCRIPT_FILENAME" => PAGE, "HTTP_HOST" => "localhost",
              "HTTP_USER_AGENT" => "wrk", "HTTP_ACCEPT" => "*/*"]
    body = POST ? fill(UInt8('a'), 4096) : UInt8[]
    b = FastCGI.put_request!(FastCGI.ByteBuf(), 1, params, body; keep=false)
    return b.data[1:b.len]
end

const SINK = Vector{UInt8}(undef, 1 << 20)   # the response (this page's fit)

"""One request on a new socketpair; the response is `SINK[1:n]`, n returned."""
function one_request(w, req::Vector{UInt8})::Int
    a, b = Posix.socketpair()
    (a >= 0 && b >= 0) || error("socketpair: $(Posix.strerror(-a))")
    Posix.write_all(b, req) == 0 || error("writing the request failed")
    Server.serve_connection!(w, a)            # serves and closes `a`
    n = 0
    while n < length(SINK) &&
          (r = Posix.read_some(b, SINK, n, length(SINK) - n)) > 0
        n += r
    end
    Posix.closefd(b)
    return n
end

"""The CGI output of the response in `SINK[1:n]` (its STDOUT records)."""
function page_output(n::Int)::String
    records, _ = FastCGI.decode_records(SINK[1:n])
    return String(reduce(vcat, (r.content for r in records if r.type == FastCGI.STDOUT);
                         init=UInt8[]))
end

function main()
    Log.init!(2; control=false)
    Control.init!(-1)
    Posix.ignore_sigpipe()
    settings = Config.load()
    Stdio.init!()
    Warmup.run!(settings)
    w = Server.Worker(settings, -1; scoreboard=false)
    req = request_bytes()
    for _ in 1:2000
        one_request(w, req)
    end
    bytes = one_request(w, req)
    m = match(r"^Status: [45]\d\d[^\r\n]*", page_output(bytes))
    m === nothing || error("$PAGE answered $(m.match): not a page to measure")
    image = unsafe_string(Base.JLOptions().image_file)
    println("$(basename(PAGE)) on $(image), $bytes bytes per response, $N requests per round")
    for r in 1:3
        GC.gc()
        t = @timed for _ in 1:N
            one_request(w, req)
        end
        println("round $r: ", round(t.time / N * 1e6, digits=2), " µs/request, ",
                round(Int, t.bytes / N), " bytes allocated/request, GC ",
                round(t.gctime / N * 1e6, digits=2), " µs/request")
    end
end

main()
