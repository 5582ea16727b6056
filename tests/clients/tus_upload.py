#!/usr/bin/env python3
"""An independent TUS 1.0 client for the origin's tests, on tuspy (PyPI `tuspy`).

  tus_upload.py start  ENDPOINT TOKEN FILE ASSET STOP_AT   -> uploads the first STOP_AT bytes
                                                              and prints the upload URL
  tus_upload.py resume UPLOAD_URL TOKEN FILE                -> asks the server for its offset
                                                              (HEAD) and sends the rest

Chunks carry `Upload-Checksum: sha1 ...` so the server's checksum extension is exercised.
"""
import os
import sys

from tusclient import client

CHUNK = 256 * 1024


def main():
    mode = sys.argv[1]
    if mode == "start":
        endpoint, token, path, asset, stop_at = sys.argv[2:7]
        c = client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
        up = c.uploader(
            file_path=path,
            chunk_size=CHUNK,
            metadata={"filename": os.path.basename(path), "asset": asset},
            upload_checksum=True,
        )
        up.upload(stop_at=int(stop_at))
        print(up.url)
        print(up.offset)
    elif mode == "resume":
        url, token, path = sys.argv[2:5]
        c = client.TusClient(url.rsplit("/", 1)[0] + "/", headers={"Authorization": f"Bearer {token}"})
        up = c.uploader(file_path=path, url=url, chunk_size=CHUNK, upload_checksum=True)
        start = up.offset  # from the server's HEAD
        up.upload()
        print(start)
        print(up.offset)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
