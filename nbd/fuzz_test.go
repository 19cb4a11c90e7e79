package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// pipeConn is a net.Conn whose client side is a fixed byte string: the
// server reads the fuzz input and its replies are discarded.
type pipeConn struct {
	r io.Reader
}

func (p *pipeConn) Read(b []byte) (int, error)       { return p.r.Read(b) }
func (p *pipeConn) Write(b []byte) (int, error)      { return len(b), nil }
func (p *pipeConn) Close() error                     { return nil }
func (p *pipeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (p *pipeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (p *pipeConn) SetDeadline(time.Time) error      { return nil }
func (p *pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (p *pipeConn) SetWriteDeadline(time.Time) error { return nil }

// serveBytes runs one server connection over input to completion.
func serveBytes(t *testing.T, s *Server, input []byte) {
	if err := s.ServeConn(&pipeConn{r: bytes.NewReader(input)}); err != nil {
		t.Fatal(err)
	}
	s.connsWG.Wait()
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func reqBytes(typ, flags uint16, off uint64, length uint32, payload []byte) []byte {
	b := make([]byte, requestHeaderSize, requestHeaderSize+len(payload))
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], 1)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	return append(b, payload...)
}

// clientPrefix is a complete handshake into export "ro" (read-only) or
// "rw" with structured replies and base:allocation.
func clientPrefix(export string) []byte {
	b := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	b = append(b, optBytes(optStructuredReply, nil)...)
	b = append(b, optBytes(optSetMetaContext, metaData(export, metaContextBaseAllocation))...)
	return append(b, optBytes(optGo, nameData(export, 0, 0))...)
}

func fuzzServer(t *testing.T) (*Server, *memDevice, *memDevice) {
	ro := newMem(64<<10, Features{ReadOnly: true, Extents: true})
	for i := range ro.data {
		ro.data[i] = byte(i)
	}
	ro.extents = []Extent{{Length: 4096}, {Length: 1 << 20, Hole: true}}
	rw := newMem(64<<10, allFeatures)
	s, err := NewServer(Options{
		Exports:          []Export{{Name: "ro", Device: ro}, {Name: "rw", Device: rw}},
		MaxPayload:       1 << 16,
		HandshakeTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, ro, rw
}

// FuzzHandshake feeds arbitrary client bytes to option haggling. The
// server must never panic, hang or leak a goroutine.
func FuzzHandshake(f *testing.F) {
	f.Add(clientPrefix("rw"))
	f.Add(clientPrefix("ro"))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 3), optBytes(optList, nil)...))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 1), optBytes(optInfo, nameData("rw", 0, 2, 0, 1, 0, 2))...))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 1), optBytes(optListMetaContext, metaData("rw", "base:"))...))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 1), optBytes(optExportName, []byte("ro"))...))
	f.Add(append(binary.BigEndian.AppendUint32(nil, 1), optBytes(optStartTLS, nil)...))
	f.Fuzz(func(t *testing.T, input []byte) {
		s, ro, _ := fuzzServer(t)
		before := ro.snapshot()
		serveBytes(t, s, input)
		if !bytes.Equal(before, ro.snapshot()) {
			t.Fatal("read-only export modified")
		}
	})
}

// FuzzTransmission feeds arbitrary request streams after a valid
// handshake. The read-only export must stay unchanged whatever arrives.
func FuzzTransmission(f *testing.F) {
	f.Add(false, reqBytes(cmdRead, 0, 0, 512, nil))
	f.Add(false, reqBytes(cmdWrite, 0, 0, 4, []byte("abcd")))
	f.Add(true, reqBytes(cmdWrite, cmdFlagFUA, 100, 4, []byte("abcd")))
	f.Add(true, reqBytes(cmdWriteZeroes, cmdFlagFastZero|cmdFlagNoHole, 0, 4096, nil))
	f.Add(true, reqBytes(cmdBlockStatus, cmdFlagReqOne, 0, 65536, nil))
	f.Add(true, append(reqBytes(cmdTrim, 0, 0, 1<<16, nil), reqBytes(cmdFlush, 0, 0, 0, nil)...))
	f.Add(false, reqBytes(cmdDisc, 0, 0, 0, nil))
	f.Fuzz(func(t *testing.T, rw bool, requests []byte) {
		s, ro, _ := fuzzServer(t)
		before := ro.snapshot()
		export := "ro"
		if rw {
			export = "rw"
		}
		serveBytes(t, s, append(clientPrefix(export), requests...))
		if !bytes.Equal(before, ro.snapshot()) {
			t.Fatal("read-only export modified")
		}
	})
}

// FuzzRequest checks the decoder and the validator: whatever the header,
// a request that passes validation lies inside the export and obeys the
// negotiated flags.
func FuzzRequest(f *testing.F) {
	f.Add(reqBytes(cmdRead, 0, 0, 512, nil), uint16(0xffff), true, uint64(1<<20))
	f.Add(reqBytes(cmdWrite, cmdFlagFUA, 1<<20-1, 1, nil), uint16(flagHasFlags|flagReadOnly), false, uint64(1<<20))
	f.Add(reqBytes(cmdWriteZeroes, cmdFlagFastZero, 0, 1, nil), uint16(flagSendWriteZeroes), false, uint64(0))
	f.Fuzz(func(t *testing.T, hdr []byte, flags uint16, structured bool, size uint64) {
		req, err := parseRequest(hdr)
		if err != nil {
			if len(hdr) >= 4 && len(hdr) >= requestHeaderSize && binary.BigEndian.Uint32(hdr) == magicRequest {
				t.Fatalf("valid header refused: %v", err)
			}
			return
		}
		l := limits{flags: flags, structured: structured, baseAlloc: structured, size: size, maxPayload: 1 << 20}
		errno, msg := l.validate(&req)
		if errno != 0 {
			if msg == "" {
				t.Fatal("refusal without a reason")
			}
			return
		}
		end := req.offset + uint64(req.length)
		if req.typ != cmdFlush && (req.length == 0 || end < req.offset || end > size) {
			t.Fatalf("accepted out-of-range %s off=%d len=%d size=%d", cmdName(req.typ), req.offset, req.length, size)
		}
		writes := req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes
		if writes && flags&flagReadOnly != 0 {
			t.Fatalf("accepted %s on a read-only export", cmdName(req.typ))
		}
		if req.flags&cmdFlagFUA != 0 && flags&flagSendFUA == 0 {
			t.Fatal("accepted FUA that was not advertised")
		}
		if req.flags&cmdFlagFastZero != 0 && flags&flagSendFastZero == 0 {
			t.Fatal("accepted FAST_ZERO that was not advertised")
		}
	})
}
