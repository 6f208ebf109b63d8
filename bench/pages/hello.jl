# Hello-world page for julia-fcgi, handler style: the top level runs once per
# worker; only handle() runs per request. CGI conventions: params in ENV, body
# on stdin, and what handle() prints is the response, headers first.
function handle()
    print("Content-Type: text/plain;charset=UTF-8\r\n\r\nhello")
end
