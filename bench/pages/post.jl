# POST page for julia-fcgi, handler style: reads the whole request body from
# stdin and answers 64 KiB. The 64 KiB body is built once per worker (top
# level); handle() runs per request.
const BIG = "x"^65536

function handle()
    body = read(stdin)
    print("Content-Type: application/octet-stream\r\nX-Body-Len: ", length(body), "\r\n\r\n")
    write(stdout, BIG)
end
