module whoami

go 1.19

require github.com/aws/aws-sdk-go-v2 v1.17.1

require (
	github.com/aws/smithy-go v1.13.4 // indirect
	github.com/jmespath/go-jmespath v0.4.0 // indirect
)

// Built offline against Debian's packaged sources (golang-github-aws-aws-sdk-go-v2-dev), which ship every
// SDK module (config, credentials, service/...) merged into one module at this path.
replace (
	github.com/aws/aws-sdk-go-v2 => /usr/share/gocode/src/github.com/aws/aws-sdk-go-v2
	github.com/aws/smithy-go => /usr/share/gocode/src/github.com/aws/smithy-go
	github.com/jmespath/go-jmespath => /usr/share/gocode/src/github.com/jmespath/go-jmespath
)
