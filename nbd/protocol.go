package nbd

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// Names follow the specification so that the code reads next to it.

const (
	magicNBD           uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt      uint64 = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply      uint64 = 0x0003e889045565a9
	magicRequest       uint32 = 0x25609513
	magicSimpleReply   uint32 = 0x67446698
	magicStructReply   uint32 = 0x668e33ef
	magicExtendedReq   uint32 = 0x21e41c71 // extended headers: refused, recognised only to fail clearly
	requestHeaderSize         = 28
	simpleReplySize           = 16
	structReplyHdrSize        = 20
	optHeaderSize             = 16
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle  uint16 = 1 << 0
	flagNoZeroes       uint16 = 1 << 1
	flagCFixedNewstyle uint32 = 1 << 0
	flagCNoZeroes      uint32 = 1 << 1
)

// Transmission flags.
const (
	flagHasFlags        uint16 = 1 << 0
	flagReadOnly        uint16 = 1 << 1
	flagSendFlush       uint16 = 1 << 2
	flagSendFUA         uint16 = 1 << 3
	flagRotational      uint16 = 1 << 4
	flagSendTrim        uint16 = 1 << 5
	flagSendWriteZeroes uint16 = 1 << 6
	flagSendDF          uint16 = 1 << 7
	flagCanMultiConn    uint16 = 1 << 8
	flagSendCache       uint16 = 1 << 10
	flagSendFastZero    uint16 = 1 << 11
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types.
const (
	repAck             uint32 = 1
	repServer          uint32 = 2
	repInfo            uint32 = 3
	repMetaContext     uint32 = 4
	repErrUnsup        uint32 = 1<<31 + 1
	repErrPolicy       uint32 = 1<<31 + 2
	repErrInvalid      uint32 = 1<<31 + 3
	repErrTLSReqd      uint32 = 1<<31 + 5
	repErrUnknown      uint32 = 1<<31 + 6
	repErrShutdown     uint32 = 1<<31 + 7
	repErrBlockSizeReq uint32 = 1<<31 + 8
	repErrTooBig       uint32 = 1<<31 + 9
)

// NBD_INFO types carried in NBD_REP_INFO.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Commands.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags.
const (
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Structured reply chunk types and flags.
const (
	replyFlagDone        uint16 = 1 << 0
	replyTypeNone        uint16 = 0
	replyTypeOffsetData  uint16 = 1
	replyTypeOffsetHole  uint16 = 2
	replyTypeBlockStatus uint16 = 5
	replyTypeError       uint16 = 1<<15 + 1
	replyTypeErrorOffset uint16 = 1<<15 + 2
)

// Error values allowed on the wire.
const (
	errnoPERM     uint32 = 1
	errnoIO       uint32 = 5
	errnoNOMEM    uint32 = 12
	errnoINVAL    uint32 = 22
	errnoNOSPC    uint32 = 28
	errnoOVERFLOW uint32 = 75
	errnoNOTSUP   uint32 = 95
	errnoSHUTDOWN uint32 = 108
)

// base:allocation status flags.
const (
	stateHole uint32 = 1 << 0
	stateZero uint32 = 1 << 1
)

const metaContextBaseAllocation = "base:allocation"

// maxStringLen is the protocol's limit for names and messages.
const maxStringLen = 4096
