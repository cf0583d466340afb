// An S3 server on 127.0.0.1 for bench.incremental_launch: gofakes3's in-memory store,
// whose listing walks a sorted skip list a page at a time as S3 does (moto's sorts the
// whole bucket for every page: 1.9 s a page at 10^5 keys, which is the emulator's cost,
// not the job's).
//
//	s3server [-fill BUCKET/PREFIX -count N -size BYTES]
//
// With -fill it first puts N objects of BYTES bytes named PREFIXdata.tfrecord-%06d-of-%06d
// straight into its store (10^5 uploads over HTTP take minutes and are not what is
// measured), then prints its URL on one line and serves until killed.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	fill := flag.String("fill", "", "BUCKET/PREFIX to fill before serving")
	count := flag.Int("count", 0, "objects to put under -fill")
	size := flag.Int("size", 64, "bytes in each object")
	flag.Parse()

	backend := s3mem.New()
	if *fill != "" {
		bucket, prefix, _ := strings.Cut(*fill, "/")
		if err := backend.CreateBucket(bucket); err != nil {
			log.Fatal(err)
		}
		body := bytes.Repeat([]byte("x"), *size)
		for i := 0; i < *count; i++ {
			key := fmt.Sprintf("%sdata.tfrecord-%06d-of-%06d", prefix, i, *count)
			_, err := backend.PutObject(bucket, key, map[string]string{},
				bytes.NewReader(body), int64(*size), nil)
			if err != nil {
				log.Fatal(err)
			}
		}
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	faker := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog()))
	fmt.Fprintf(os.Stdout, "http://%s\n", listener.Addr())
	log.Fatal(http.Serve(listener, faker.Server()))
}
