# An explicit status.
print("Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such thing\n")
