// Command goflate is the oracle for Krill's Go gzip recipe (tests/test_gogzip.py):
// it gzips stdin to stdout with Go's own compress/gzip, as Docker, BuildKit,
// crane and ko do, so the tests can compare Krill's C port byte for byte.
//
//	goflate LEVEL [CHUNK] [-raw]
//	goflate -batch
//	goflate -tar LEVEL DIR...
//
// LEVEL is a compress/gzip level (-2 HuffmanOnly … 9). CHUNK > 0 writes the
// input in Write calls of CHUNK bytes (0, the default: one Write of all of
// it). -raw writes the bare deflate stream, without gzip framing.
//
// -batch serves many requests over one process (the tests' hypothesis
// cases): each request on stdin is int32 level, int32 chunk, uint32 length
// (little-endian) and the input; each answer on stdout is uint32 length and
// the gzip stream.
//
// -tar writes a gzipped tar of the DIRs the way Docker's pkg/archive does:
// archive/tar writing straight into gzip.Writer, each file's content copied
// through a 32 KiB bufio.Writer, so Go sees Docker's Write splits (headers,
// 32 KiB pieces, each file's unaligned end, padding).
//
// Standard library only, so `go build` needs no network.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "goflate:", err)
		os.Exit(2)
	}
}

func run(args []string) error {
	if len(args) == 1 && args[0] == "-batch" {
		return batch(bufio.NewReader(os.Stdin), bufio.NewWriter(os.Stdout))
	}
	if len(args) >= 3 && args[0] == "-tar" {
		level, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		return dockerTar(level, args[2:])
	}
	raw := false
	var pos []int
	for _, a := range args {
		if a == "-raw" {
			raw = true
			continue
		}
		n, err := strconv.Atoi(a)
		if err != nil {
			return fmt.Errorf("bad argument %q (usage: goflate LEVEL [CHUNK] [-raw])", a)
		}
		pos = append(pos, n)
	}
	if len(pos) < 1 || len(pos) > 2 {
		return fmt.Errorf("usage: goflate LEVEL [CHUNK] [-raw]")
	}
	level, chunk := pos[0], 0
	if len(pos) == 2 {
		chunk = pos[1]
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	var w io.WriteCloser
	var err error
	if raw {
		w, err = flate.NewWriter(out, level)
	} else {
		w, err = gzip.NewWriterLevel(out, level)
	}
	if err != nil {
		return err
	}
	if chunk <= 0 {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	} else {
		buf := make([]byte, chunk)
		in := bufio.NewReaderSize(os.Stdin, 1<<20)
		for {
			n, err := io.ReadFull(in, buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return werr
				}
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				break
			}
			if err != nil {
				return err
			}
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return out.Flush()
}

func batch(in *bufio.Reader, out *bufio.Writer) error {
	for {
		var head [12]byte
		if _, err := io.ReadFull(in, head[:]); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		level := int(int32(binary.LittleEndian.Uint32(head[0:])))
		chunk := int(int32(binary.LittleEndian.Uint32(head[4:])))
		data := make([]byte, binary.LittleEndian.Uint32(head[8:]))
		if _, err := io.ReadFull(in, data); err != nil {
			return err
		}
		var buf bytes.Buffer
		w, err := gzip.NewWriterLevel(&buf, level)
		if err != nil {
			return err
		}
		for rest := data; len(rest) > 0 || chunk <= 0; {
			n := len(rest)
			if chunk > 0 && chunk < n {
				n = chunk
			}
			if _, err := w.Write(rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
			if chunk <= 0 {
				break
			}
		}
		if err := w.Close(); err != nil {
			return err
		}
		var size [4]byte
		binary.LittleEndian.PutUint32(size[:], uint32(buf.Len()))
		out.Write(size[:])
		out.Write(buf.Bytes())
		if err := out.Flush(); err != nil {
			return err
		}
	}
}

func dockerTar(level int, dirs []string) error {
	out := bufio.NewWriterSize(os.Stdout, 32*1024)
	gz, err := gzip.NewWriterLevel(out, level)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(gz)
	copyBuf := bufio.NewWriterSize(nil, 32*1024)
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			link := ""
			if info.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(path); err != nil {
					return err
				}
			}
			hdr, err := tar.FileInfoHeader(info, link)
			if err != nil {
				return nil // sockets and the like: Docker skips them too
			}
			hdr.Name = path
			hdr.Format = tar.FormatPAX
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			copyBuf.Reset(tw)
			if _, err := io.Copy(copyBuf, f); err != nil {
				return err
			}
			return copyBuf.Flush()
		})
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return out.Flush()
}
