# 1 MiB: 16384 lines of 64 bytes, each numbered, so a lost or reordered
# chunk shows.
function handle()
    print("Content-Type: text/plain\r\n\r\n")
    for i in 0:16383
        print(lpad(i, 8, '0'), '.' ^ 55, '\n')
    end
end
